/* Consistency groups, resize and tagging through the C ABI: two disks cut
 * at one instant and applied all or none, a disk grown while replicating,
 * a point tagged app-consistent, and the error paths. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u
#define SIZE ((uint64_t)1 << 20)

static char dir[] = "/tmp/blockrep-c-group-XXXXXX";
static unsigned char x[2 * SIZE], y[2 * SIZE];

struct disk {
  char path[256], spool[256], rdir[256];
  int fd;
  blockrep_pipeline *p;
  blockrep_replica *r;
};

static void next_log_path(blockrep_pipeline *p, char *path, size_t n, uint64_t *seq,
                          uint8_t digest[32]) {
  blockrep_spooled_log l;
  uint32_t found = 0;
  size_t len;
  CHECK(blockrep_pipeline_next_log(p, &l, &found) == BLOCKREP_STATUS_OK && found);
  CHECK(blockrep_pipeline_log_path(p, l.sequence, path, n, &len) == BLOCKREP_STATUS_OK);
  *seq = l.sequence;
  memcpy(digest, l.digest, 32);
}

static void same(struct disk *d, uint64_t size) {
  blockrep_point pts[16];
  size_t n = 0;
  CHECK(blockrep_replica_points(d->r, pts, 16, &n) == BLOCKREP_STATUS_OK && n > 0);
  blockrep_view *v;
  CHECK(blockrep_view_open(d->r, pts[n - 1].sequence, &v) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_view_read(v, x, size, 0) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_OK);
  CHECK(pread(d->fd, y, size, 0) == (ssize_t)size);
  CHECK(memcmp(x, y, size) == 0);
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  struct disk d[2];
  char gdir[300];
  snprintf(gdir, sizeof gdir, "%s/group", dir);
  for (int i = 0; i < 2; i++) {
    snprintf(d[i].path, sizeof d[i].path, "%s/disk%d.img", dir, i);
    snprintf(d[i].spool, sizeof d[i].spool, "%s/spool%d", dir, i);
    snprintf(d[i].rdir, sizeof d[i].rdir, "%s/replica%d", dir, i);
    d[i].fd = open(d[i].path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(d[i].fd >= 0 && ftruncate(d[i].fd, SIZE) == 0);
    blockrep_disk_id id;
    memset(id.bytes, 20 + i, sizeof id.bytes);
    CHECK(blockrep_pipeline_create(d[i].path, d[i].spool, &id, 1, BS, 1 << 30, NULL, &d[i].p) ==
          BLOCKREP_STATUS_OK);
    if (i == 0) {
      /* A member that did not join groups is refused. */
      const blockrep_pipeline *alone[1] = {d[0].p};
      CHECK(blockrep_group_cycle(alone, 1, 1, NULL, NULL) == BLOCKREP_STATUS_MISUSE);
    }
    CHECK(blockrep_pipeline_join_group(NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
    CHECK(blockrep_pipeline_join_group(d[i].p) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_pipeline_initial_sync(d[i].p, NULL) == BLOCKREP_STATUS_OK);
    char path[512];
    uint64_t seq;
    uint8_t dg[32];
    next_log_path(d[i].p, path, sizeof path, &seq, dg);
    CHECK(blockrep_replica_create(d[i].rdir, path, &d[i].r) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_pipeline_ack(d[i].p, seq, dg) == BLOCKREP_STATUS_OK);
  }

  /* Writes on both, one group cycle, applied as one. */
  for (int i = 0; i < 2; i++) {
    memset(x, 0x10 + i, 3 * BS);
    CHECK(blockrep_pipeline_write_begin(d[i].p, 5 * BS, 3 * BS) == BLOCKREP_STATUS_OK);
    CHECK(pwrite(d[i].fd, x, 3 * BS, 5 * BS) == 3 * BS);
    CHECK(blockrep_pipeline_write_end(d[i].p, 5 * BS, 3 * BS) == BLOCKREP_STATUS_OK);
  }
  const blockrep_pipeline *members[2] = {d[0].p, d[1].p};
  const blockrep_pipeline *bad[2] = {d[0].p, NULL};
  blockrep_cycle_info info[2];
  CHECK(blockrep_group_cycle(bad, 2, 1, NULL, info) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_group_cycle(members, 0, 1, NULL, info) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_group_cycle(members, 2, 5, NULL, info) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_group_cycle(members, 2, 2, "both", info) == BLOCKREP_STATUS_OK);
  CHECK(info[0].blocks == 3 && info[1].blocks == 3);

  const blockrep_replica *rs[2] = {d[0].r, d[1].r};
  blockrep_replica_group *g = NULL;
  CHECK(blockrep_replica_group_open(gdir, rs, 2, &g) == BLOCKREP_STATUS_OK);
  char p0[512], p1[512];
  uint64_t s0, s1;
  uint8_t g0[32], g1[32];
  next_log_path(d[0].p, p0, sizeof p0, &s0, g0);
  next_log_path(d[1].p, p1, sizeof p1, &s1, g1);
  const char *one[1] = {p0};
  CHECK(blockrep_replica_group_apply(g, one, 1, NULL) == BLOCKREP_STATUS_MISMATCH);
  const char *paths[2] = {p1, p0};
  uint32_t applied = 9;
  CHECK(blockrep_replica_group_apply(g, paths, 2, &applied) == BLOCKREP_STATUS_OK && applied == 1);
  CHECK(blockrep_replica_group_apply(g, paths, 2, &applied) == BLOCKREP_STATUS_OK && applied == 0);
  CHECK(blockrep_pipeline_ack(d[0].p, s0, g1) == BLOCKREP_STATUS_MISMATCH); /* other content */
  CHECK(blockrep_pipeline_ack(d[0].p, s0, g0) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_ack(d[1].p, s1, g1) == BLOCKREP_STATUS_OK);
  same(&d[0], SIZE);
  same(&d[1], SIZE);
  CHECK(blockrep_replica_group_free(g) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_group_free(g) == BLOCKREP_STATUS_MISUSE);

  /* Tag the group's point of disk 0 again, under another label. */
  CHECK(blockrep_replica_tag(d[0].r, s0, "checked") == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_tag(d[0].r, 999, "x") == BLOCKREP_STATUS_OUT_OF_RANGE);

  /* Disk 1 grows to twice its size; the replica follows. */
  CHECK(ftruncate(d[1].fd, 2 * SIZE) == 0);
  CHECK(blockrep_pipeline_resize(NULL, 2 * SIZE) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_resize(d[1].p, 2 * SIZE) == BLOCKREP_STATUS_OK);
  memset(x, 0x77, BS);
  CHECK(blockrep_pipeline_write_begin(d[1].p, SIZE + BS, BS) == BLOCKREP_STATUS_OK);
  CHECK(pwrite(d[1].fd, x, BS, SIZE + BS) == BS);
  CHECK(blockrep_pipeline_write_end(d[1].p, SIZE + BS, BS) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_cycle(d[1].p, 1, NULL, NULL) == BLOCKREP_STATUS_OK);
  next_log_path(d[1].p, p1, sizeof p1, &s1, g1);
  CHECK(blockrep_replica_apply(d[1].r, p1, NULL, NULL) == BLOCKREP_STATUS_OK);
  same(&d[1], 2 * SIZE);

  for (int i = 0; i < 2; i++) {
    CHECK(blockrep_pipeline_close(d[i].p) == BLOCKREP_STATUS_OK);
    CHECK(blockrep_replica_free(d[i].r) == BLOCKREP_STATUS_OK);
    close(d[i].fd);
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  puts("group: ok");
  return 0;
}
