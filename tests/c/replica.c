/* Logs and the replica through the C ABI: write a full log and deltas,
 * verify them, build a replica, apply (twice), view old points, export,
 * prune and roll back, and check every byte. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#define BS 4096u
#define BLOCKS 64u
#define SIZE ((uint64_t)BLOCKS * BS)
#define POINTS 4

static unsigned char disk[POINTS][SIZE]; /* the source at each point */
static blockrep_disk_id id;

static void log_path(char *out, size_t n, const char *dir, unsigned seq) {
  snprintf(out, n, "%s/log-%u", dir, seq);
}

int main(void) {
  char dir[] = "/tmp/blockrep-c-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char rdir[256], path[256], exported[256];
  snprintf(rdir, sizeof rdir, "%s/replica", dir);
  memset(id.bytes, 3, sizeof id.bytes);
  unsigned seed = 12345;
  for (size_t i = 0; i < SIZE; i++) {
    seed = seed * 1103515245u + 12345u;
    disk[0][i] = (i / BS) % 3 == 0 ? 0 : (unsigned char)(seed >> 16);
  }

  /* Point 1: the full log. */
  uint8_t digest[32];
  blockrep_log_writer *w = NULL;
  log_path(path, sizeof path, dir, 1);
  CHECK(blockrep_log_writer_create(path, &id, SIZE, BS, 7, 1, 1, NULL, &w) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT); /* kind 7 */
  CHECK(blockrep_log_writer_create(path, &id, SIZE, BS, 1, 1, 1, NULL, &w) ==
        BLOCKREP_STATUS_OK);
  for (unsigned b = 0; b < BLOCKS; b++)
    CHECK(blockrep_log_writer_add_block(w, b, disk[0] + (size_t)b * BS, BS) ==
          BLOCKREP_STATUS_OK);
  CHECK(blockrep_log_writer_add_block(w, 0, disk[0], BS) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT); /* not ascending */
  CHECK(blockrep_log_writer_commit(w, digest) == BLOCKREP_STATUS_OK);

  blockrep_log_info info;
  CHECK(blockrep_log_verify(path, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.sequence == 1 && info.kind == BLOCKREP_LOG_FULL && info.blocks == BLOCKS);
  CHECK(memcmp(info.digest, digest, 32) == 0);

  blockrep_replica *r = NULL;
  CHECK(blockrep_replica_create(rdir, path, &r) == BLOCKREP_STATUS_OK);
  {
    /* A second create is refused and leaves the replica as it was. */
    blockrep_replica *twice = NULL;
    CHECK(blockrep_replica_create(rdir, path, &twice) == BLOCKREP_STATUS_MISUSE && !twice);
  }

  /* A writer abandoned half way leaves nothing behind. */
  char scratch[300];
  snprintf(scratch, sizeof scratch, "%s/abandoned", dir);
  blockrep_log_writer *aw = NULL;
  CHECK(blockrep_log_writer_create(scratch, &id, SIZE, BS, 2, 1, 2, digest, &aw) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_log_writer_add_zero(aw, 0, 4) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_log_writer_add_zero(aw, 2, 1) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_log_writer_add_zero(aw, BLOCKS, 1) == BLOCKREP_STATUS_OUT_OF_RANGE);
  CHECK(blockrep_log_writer_free(aw) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_log_writer_free(aw) == BLOCKREP_STATUS_MISUSE);
  CHECK(access(scratch, F_OK) != 0);

  /* Points 2..4: deltas, each applied twice (the second is a no-op). */
  for (unsigned p = 1; p < POINTS; p++) {
    memcpy(disk[p], disk[p - 1], SIZE);
    log_path(path, sizeof path, dir, p + 1);
    CHECK(blockrep_log_writer_create(path, &id, SIZE, BS, 2, 1, p + 1, digest, &w) ==
          BLOCKREP_STATUS_OK);
    for (unsigned b = p; b < BLOCKS; b += 5) {
      memset(disk[p] + (size_t)b * BS, (int)(p * 17 + b), BS);
      CHECK(blockrep_log_writer_add_block(w, b, disk[p] + (size_t)b * BS, BS) ==
            BLOCKREP_STATUS_OK);
    }
    CHECK(blockrep_log_writer_commit(w, digest) == BLOCKREP_STATUS_OK);
    uint64_t seq = 0;
    uint32_t applied = 9;
    CHECK(blockrep_replica_apply(r, path, &seq, &applied) == BLOCKREP_STATUS_OK);
    CHECK(seq == p + 1 && applied == 1);
    CHECK(blockrep_replica_apply(r, path, &seq, &applied) == BLOCKREP_STATUS_OK);
    CHECK(applied == 0);
  }
  /* A log of another disk is refused. */
  blockrep_disk_id other;
  memset(other.bytes, 4, sizeof other.bytes);
  log_path(path, sizeof path, dir, 99);
  CHECK(blockrep_log_writer_create(path, &other, SIZE, BS, 2, 1, 5, digest, &w) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_log_writer_commit(w, NULL) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_apply(r, path, NULL, NULL) == BLOCKREP_STATUS_MISMATCH);
  CHECK(blockrep_replica_apply(r, "/nonexistent/log", NULL, NULL) == BLOCKREP_STATUS_IO);

  /* Every point reads back exactly through a view. */
  blockrep_point pts[8];
  size_t n = 0;
  CHECK(blockrep_replica_points(r, pts, 8, &n) == BLOCKREP_STATUS_OK && n == POINTS);
  static unsigned char buf[SIZE];
  for (unsigned p = 0; p < POINTS; p++) {
    blockrep_view *v = NULL;
    CHECK(pts[p].sequence == p + 1 && pts[p].consistency == BLOCKREP_CONSISTENCY_CRASH);
    CHECK(blockrep_view_open(r, p + 1, &v) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_view_read(v, buf, SIZE, 0) == BLOCKREP_STATUS_OK);
    CHECK(memcmp(buf, disk[p], SIZE) == 0);
    CHECK(blockrep_view_read(v, buf, 10, SIZE - 5) == BLOCKREP_STATUS_OUT_OF_RANGE);
    CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_MISUSE);
  }
  blockrep_view *v = NULL;
  CHECK(blockrep_view_open(r, 99, &v) == BLOCKREP_STATUS_OUT_OF_RANGE);

  /* Export point 2 and compare the file. */
  snprintf(exported, sizeof exported, "%s/point2.raw", dir);
  CHECK(blockrep_replica_export(r, 2, exported) == BLOCKREP_STATUS_OK);
  FILE *f = fopen(exported, "rb");
  CHECK(f != NULL && fread(buf, 1, SIZE, f) == SIZE);
  fclose(f);
  CHECK(memcmp(buf, disk[1], SIZE) == 0);

  /* A viewed point blocks a rollback past it; prune keeps the newest two. */
  CHECK(blockrep_view_open(r, 4, &v) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_rollback(r, 2) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_OK);
  size_t dropped = 0;
  blockrep_retention keep_young = {0, 0, 3600, 0};
  CHECK(blockrep_replica_prune_policy(r, NULL, 0, &dropped) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_replica_prune_policy(r, &keep_young, 0, &dropped) == BLOCKREP_STATUS_OK &&
        dropped == 0); /* every point is younger than an hour */
  CHECK(blockrep_replica_prune(r, 2, 0, &dropped) == BLOCKREP_STATUS_OK && dropped == 2);
  CHECK(blockrep_replica_rollback(r, 3) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_free(r) == BLOCKREP_STATUS_OK);

  /* Reopen: at point 3, exactly. */
  CHECK(blockrep_replica_open(rdir, &r) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_points(r, NULL, 0, &n) == BLOCKREP_STATUS_OK && n == 1);
  CHECK(blockrep_view_open(r, 3, &v) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_view_read(v, buf, SIZE, 0) == BLOCKREP_STATUS_OK);
  CHECK(memcmp(buf, disk[2], SIZE) == 0);
  CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_free(r) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_free(NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);

  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  puts("replica C ABI: ok");
  return 0;
}
