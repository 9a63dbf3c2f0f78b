/* The persistent tracker through the C ABI: open or create, the write
 * guard pair, cut and commit, clean close, unclean stop, error paths. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#define SIZE (64ull << 20)
#define BS 4096u
#define REGION (1u << 20)

static uint64_t count_of(blockrep_blockset *s) {
  uint64_t n = 0;
  CHECK(blockrep_blockset_count(s, &n) == BLOCKREP_STATUS_OK);
  return n;
}

int main(void) {
  char path[] = "/tmp/blockrep-ptracker-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  unlink(path); /* a path that does not exist yet */
  blockrep_disk_id id;
  memset(id.bytes, 7, sizeof id.bytes);
  blockrep_ptracker *t = NULL;
  blockrep_open_state st = 0;

  CHECK(blockrep_ptracker_open(NULL, NULL, &id, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_ptracker_open(path, NULL, &id, SIZE, BS, 12345, &t, &st) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(t == NULL);
  CHECK(blockrep_ptracker_open(path, NULL, &id, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_CREATED);

  /* Writes: begin before submitting, end after completion. */
  CHECK(blockrep_ptracker_end_write(t, 0, 4096) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_ptracker_begin_write(t, 0, 0) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_ptracker_begin_write(t, SIZE, 1) == BLOCKREP_STATUS_OUT_OF_RANGE);
  CHECK(blockrep_ptracker_begin_write(t, 0, 8192) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_end_write(t, 0, 8192) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_begin_write(t, 10 << 20, 4096) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_end_write(t, 10 << 20, 4096) == BLOCKREP_STATUS_OK);
  /* An end without its begin, even beside another write in flight in the
   * same region, is refused: it must not complete that write. */
  CHECK(blockrep_ptracker_begin_write(t, 10 << 20, 8192) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_end_write(t, 10 << 20, 4096) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_ptracker_end_write(t, 10 << 20, 8192) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_end_write(t, 10 << 20, 8192) == BLOCKREP_STATUS_MISUSE);

  blockrep_blockset *set = NULL;
  CHECK(blockrep_ptracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  CHECK(count_of(set) == 4);
  CHECK(blockrep_ptracker_commit(t, set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_commit(t, set) == BLOCKREP_STATUS_MISUSE); /* not outstanding */
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);

  /* One more write, a failed cycle handed back, then a clean close. */
  CHECK(blockrep_ptracker_begin_write(t, 20 << 20, 4096) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_end_write(t, 20 << 20, 4096) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_reclaim(t, set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_MISUSE);

  /* Clean reopen: the one dirty block is back. */
  CHECK(blockrep_ptracker_open(path, NULL, &id, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_CLEAN);
  CHECK(blockrep_ptracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  CHECK(count_of(set) == 1);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  /* A write whose end never comes, then an unclean stop. */
  CHECK(blockrep_ptracker_begin_write(t, 30 << 20, 4096) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_free(t) == BLOCKREP_STATUS_OK);

  CHECK(blockrep_ptracker_open(path, NULL, &id, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_RECOVERED);
  CHECK(blockrep_ptracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  /* At least the whole region of the unfinished write is resent. */
  CHECK(count_of(set) >= REGION / BS);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);

  /* Another disk's id: the file is untrusted and recreated. */
  blockrep_disk_id other;
  memset(other.bytes, 8, sizeof other.bytes);
  CHECK(blockrep_ptracker_open(path, NULL, &other, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_INVALID);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);

  /* With the disk named, a write made while nothing tracked is detected. */
  char disk[] = "/tmp/blockrep-ptracker-disk-XXXXXX";
  int dfd = mkstemp(disk);
  CHECK(dfd >= 0 && ftruncate(dfd, SIZE) == 0);
  CHECK(blockrep_ptracker_open(path, disk, &other, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_ptracker_open(path, disk, &other, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_CLEAN); /* untouched */
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);
  CHECK(pwrite(dfd, "x", 1, 4096) == 1); /* nobody tracking */
  CHECK(blockrep_ptracker_open(path, disk, &other, SIZE, BS, REGION, &t, &st) ==
        BLOCKREP_STATUS_OK);
  CHECK(st == BLOCKREP_OPEN_INVALID);
  CHECK(blockrep_ptracker_close(t) == BLOCKREP_STATUS_OK);
  close(dfd);
  unlink(disk);
  unlink(path);
  puts("persistent tracker C ABI: ok");
  return 0;
}
