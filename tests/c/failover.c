/* Failover through the C ABI: a test failover, a promotion with writes on
 * the new primary, commit, reverse replication to the old primary's disk
 * adopted as a replica, statuses as JSON, and the error paths; the disks
 * are compared byte for byte. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u
#define SIZE ((uint64_t)2 << 20)

static unsigned char a[SIZE], b[SIZE];
static char dir[] = "/tmp/blockrep-c-fo-XXXXXX";
static int fd;

static void guest_write(blockrep_pipeline *p, const void *data, size_t len, uint64_t off) {
  CHECK(blockrep_pipeline_write_begin(p, off, len) == BLOCKREP_STATUS_OK);
  CHECK(pwrite(fd, data, len, (off_t)off) == (ssize_t)len);
  CHECK(blockrep_pipeline_write_end(p, off, len) == BLOCKREP_STATUS_OK);
}

/* Applies every unshipped log of `p` to `*r` (created from the full log
 * when null), by path. */
static void ship(blockrep_pipeline *p, const char *rdir, blockrep_replica **r) {
  for (;;) {
    blockrep_spooled_log l;
    uint32_t found;
    CHECK(blockrep_pipeline_next_log(p, &l, &found) == BLOCKREP_STATUS_OK);
    if (!found) return;
    char path[512];
    size_t n;
    CHECK(blockrep_pipeline_log_path(p, l.sequence, path, sizeof path, &n) ==
          BLOCKREP_STATUS_OK);
    if (*r == NULL)
      CHECK(blockrep_replica_create(rdir, path, r) == BLOCKREP_STATUS_OK);
    else
      CHECK(blockrep_replica_apply(*r, path, NULL, NULL) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_pipeline_ack(p, l.sequence, l.digest) == BLOCKREP_STATUS_OK);
  }
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  char disk[256], spool_a[256], spool_b[256], rdir_b[256], rdir_a[256], overlay[256];
  snprintf(disk, sizeof disk, "%s/a.img", dir);
  snprintf(spool_a, sizeof spool_a, "%s/spool-a", dir);
  snprintf(spool_b, sizeof spool_b, "%s/spool-b", dir);
  snprintf(rdir_b, sizeof rdir_b, "%s/replica-b", dir);
  snprintf(rdir_a, sizeof rdir_a, "%s/replica-a", dir);
  snprintf(overlay, sizeof overlay, "%s/test-overlay", dir);
  fd = open(disk, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CHECK(fd >= 0);
  unsigned seed = 5;
  for (uint64_t i = 0; i < SIZE; i++) {
    seed = seed * 1103515245u + 12345u;
    a[i] = (unsigned char)(seed >> 16);
  }
  CHECK(pwrite(fd, a, SIZE, 0) == (ssize_t)SIZE);
  blockrep_disk_id id;
  memset(id.bytes, 9, sizeof id.bytes);

  /* A replicates to B. */
  blockrep_pipeline *pa = NULL;
  CHECK(blockrep_pipeline_create(disk, spool_a, &id, 1, BS, 1 << 30, NULL, &pa) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_initial_sync(pa, NULL) == BLOCKREP_STATUS_OK);
  blockrep_replica *rb = NULL;
  ship(pa, rdir_b, &rb);
  memset(b, 0x33, 10000);
  guest_write(pa, b, 10000, 5000);
  CHECK(blockrep_pipeline_cycle(pa, 1, NULL, NULL) == BLOCKREP_STATUS_OK);
  ship(pa, rdir_b, &rb);

  /* A test failover: writable, discarded without a trace. */
  blockrep_test_failover *t = NULL;
  CHECK(blockrep_test_failover_open(NULL, 0, overlay, &t) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_test_failover_open(rb, 99, overlay, &t) == BLOCKREP_STATUS_OUT_OF_RANGE);
  CHECK(blockrep_test_failover_open(rb, 0, overlay, &t) == BLOCKREP_STATUS_OK);
  memset(b, 0x77, 8192);
  CHECK(blockrep_test_failover_write(t, b, 8192, 0) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_test_failover_read(t, a, 8192, 0) == BLOCKREP_STATUS_OK);
  CHECK(memcmp(a, b, 8192) == 0);
  CHECK(blockrep_test_failover_write(t, NULL, 1, 0) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_test_failover_free(t) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_test_failover_free(t) == BLOCKREP_STATUS_MISUSE);

  /* Writes on A that never ship; then A is lost and B promoted. */
  memset(b, 0x44, 3 * BS);
  guest_write(pa, b, 3 * BS, 100 * BS);
  blockrep_failover *fo = NULL;
  CHECK(blockrep_failover_promote(NULL, 0, &fo) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_failover_promote(rb, 0, &fo) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_apply(rb, disk, NULL, NULL) == BLOCKREP_STATUS_MISUSE ||
        blockrep_replica_apply(rb, disk, NULL, NULL) == BLOCKREP_STATUS_CORRUPT);
  blockrep_pipeline *pb = NULL;
  CHECK(blockrep_failover_start_pipeline(fo, spool_b, 1 << 30, &pb) == BLOCKREP_STATUS_OK);
  memset(b, 0x55, 2 * BS);
  CHECK(blockrep_pipeline_write_begin(pb, 7 * BS, 2 * BS) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_failover_write(fo, b, 2 * BS, 7 * BS) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_write_end(pb, 7 * BS, 2 * BS) == BLOCKREP_STATUS_OK);
  blockrep_blockset *committed = NULL, *old = NULL, *both = NULL;
  CHECK(blockrep_failover_commit(fo, &committed) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_failover_commit(fo, NULL) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_failover_switch(fo, 1) == BLOCKREP_STATUS_MISUSE);
  uint64_t n = 0;
  CHECK(blockrep_blockset_count(committed, &n) == BLOCKREP_STATUS_OK && n == 2);

  /* Reverse replication: A's divergence and the commit's, one resync log,
   * applied to A's disk adopted at the failover point. */
  CHECK(blockrep_pipeline_divergence(pa, &old) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_count(old, &n) == BLOCKREP_STATUS_OK && n == 3);
  CHECK(blockrep_blockset_union(old, NULL, &both) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_blockset_union(old, committed, &both) == BLOCKREP_STATUS_OK);
  blockrep_cycle_info info;
  CHECK(blockrep_pipeline_reverse_sync(pb, both, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.blocks == 5 && info.epoch == 2);
  blockrep_adopt_point at;
  CHECK(blockrep_failover_adopt_point(fo, &at) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_free(pa) == BLOCKREP_STATUS_OK);
  blockrep_replica *ra = NULL;
  CHECK(blockrep_replica_adopt(rdir_a, disk, NULL, &ra) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_replica_adopt(rdir_a, disk, &at, &ra) == BLOCKREP_STATUS_OK);
  ship(pb, rdir_a, &ra);
  CHECK(pread(fd, a, SIZE, 0) == (ssize_t)SIZE);
  CHECK(blockrep_failover_read(fo, b, SIZE, 0) == BLOCKREP_STATUS_OK);
  CHECK(memcmp(a, b, SIZE) == 0);

  /* Statuses for a console. */
  blockrep_disk_status st;
  CHECK(blockrep_replica_disk_status(rb, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_replica_disk_status(rb, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.role == BLOCKREP_ROLE_FAILED_OVER && st.has_rpo);
  CHECK(blockrep_replica_disk_status(ra, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.role == BLOCKREP_ROLE_REPLICA && st.epoch == 2);
  CHECK(blockrep_pipeline_disk_status(pb, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.role == BLOCKREP_ROLE_PRIMARY && st.pending_logs == 0);

  CHECK(blockrep_blockset_free(both) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_free(old) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_free(committed) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_close(pb) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_failover_free(fo) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_failover_free(fo) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_replica_free(ra) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_free(rb) == BLOCKREP_STATUS_OK);
  close(fd);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  puts("failover: ok");
  return 0;
}
