/* The tracker through the C ABI: every function, every error path, and
 * several threads marking while another cuts. Exits non-zero on failure. */
#include "blockrep.h"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define BS 4096u
#define BLOCKS 100003u
#define THREADS 3

static blockrep_tracker *shared_tracker;
static unsigned char marked[BLOCKS];

static void *writer(void *arg) {
  unsigned id = (unsigned)(size_t)arg;
  /* Each thread owns the blocks b with b % THREADS == id; mark each once. */
  for (unsigned b = id; b < BLOCKS; b += THREADS) {
    marked[b] = 1;
    CHECK(blockrep_tracker_mark(shared_tracker, (uint64_t)b * BS, BS) ==
          BLOCKREP_STATUS_OK);
  }
  return NULL;
}

static uint64_t drain(blockrep_blockset *set, unsigned char *seen) {
  blockrep_extent ext[7];
  uint64_t from = 0, total = 0;
  for (;;) {
    size_t n = 0;
    uint64_t next = 0;
    CHECK(blockrep_blockset_extents(set, from, ext, 7, &n, &next) ==
          BLOCKREP_STATUS_OK);
    for (size_t i = 0; i < n; i++) {
      for (uint64_t b = ext[i].start; b < ext[i].start + ext[i].count; b++) {
        CHECK(b < BLOCKS && marked[b]); /* never before it was marked */
        seen[b]++;
        total++;
      }
    }
    if (next == UINT64_MAX) break;
    from = next;
  }
  return total;
}

int main(void) {
  char msg[256];
  size_t len = 0;

  CHECK(strcmp(blockrep_version(), BLOCKREP_VERSION) == 0);

  /* Bad arguments: typed statuses, never a crash. */
  blockrep_tracker *t = NULL;
  CHECK(blockrep_tracker_new(1 << 20, 4096, NULL) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_tracker_new(1 << 20, 1000, &t) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(t == NULL); /* outputs are written only on success */
  /* Strings: ask the size, then fill; too small is refused, untouched. */
  CHECK(blockrep_last_error(NULL, 0, &len) == BLOCKREP_STATUS_OK && len > 0);
  CHECK(blockrep_last_error(msg, sizeof msg, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  strcpy(msg, "unchanged");
  CHECK(blockrep_last_error(msg, len, &len) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(strcmp(msg, "unchanged") == 0);
  CHECK(blockrep_last_error(msg, len + 1, &len) == BLOCKREP_STATUS_OK);
  CHECK(strlen(msg) == len && strstr(msg, "block size") != NULL);
  CHECK(blockrep_tracker_new(0, 4096, &t) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_tracker_mark(NULL, 0, 1) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_tracker_free(NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);

  CHECK(blockrep_tracker_new((uint64_t)BLOCKS * BS, BS, &t) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_tracker_mark(t, 0, 0) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  {
    /* A handle of another type is refused by its tag, not misread. */
    uint64_t n = 0;
    CHECK(blockrep_blockset_count((const blockrep_blockset *)t, &n) ==
          BLOCKREP_STATUS_MISUSE);
  }
  CHECK(blockrep_tracker_mark(t, UINT64_MAX - 5, 10) ==
        BLOCKREP_STATUS_OUT_OF_RANGE);
  CHECK(blockrep_tracker_mark(t, (uint64_t)BLOCKS * BS, 1) ==
        BLOCKREP_STATUS_OUT_OF_RANGE);

  /* Mark, cut, iterate, reclaim. */
  CHECK(blockrep_tracker_mark(t, 4095, 2) == BLOCKREP_STATUS_OK); /* 0, 1 */
  CHECK(blockrep_tracker_mark(t, 10 * BS, 3 * BS) == BLOCKREP_STATUS_OK);
  blockrep_blockset *set = NULL;
  CHECK(blockrep_tracker_cut(t, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_tracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  uint64_t count = 0, gen = 0;
  CHECK(blockrep_blockset_count(set, &count) == BLOCKREP_STATUS_OK && count == 5);
  CHECK(blockrep_blockset_generation(set, &gen) == BLOCKREP_STATUS_OK && gen == 1);
  CHECK(blockrep_blockset_count(set, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  blockrep_extent ext[4];
  size_t n = 0;
  uint64_t next = 0;
  CHECK(blockrep_blockset_extents(set, 0, ext, 1, &n, &next) == BLOCKREP_STATUS_OK);
  CHECK(n == 1 && ext[0].start == 0 && ext[0].count == 2 && next == 10);
  CHECK(blockrep_blockset_extents(set, next, ext, 4, &n, &next) == BLOCKREP_STATUS_OK);
  CHECK(n == 1 && ext[0].start == 10 && ext[0].count == 3 && next == UINT64_MAX);
  CHECK(blockrep_blockset_extents(set, 0, NULL, 4, &n, &next) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_tracker_reclaim(t, set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_MISUSE); /* twice */
  CHECK(blockrep_tracker_cut(t, &set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_blockset_count(set, &count) == BLOCKREP_STATUS_OK && count == 5);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_tracker_free(t) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_tracker_free(t) == BLOCKREP_STATUS_MISUSE); /* twice */

  /* Threads mark while this one cuts: every block in exactly one set. */
  CHECK(blockrep_tracker_new((uint64_t)BLOCKS * BS, BS, &shared_tracker) ==
        BLOCKREP_STATUS_OK);
  static unsigned char seen[BLOCKS];
  pthread_t th[THREADS];
  for (size_t i = 0; i < THREADS; i++)
    CHECK(pthread_create(&th[i], NULL, writer, (void *)i) == 0);
  uint64_t total = 0;
  for (int round = 0; round < 50; round++) {
    CHECK(blockrep_tracker_cut(shared_tracker, &set) == BLOCKREP_STATUS_OK);
    total += drain(set, seen);
    CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  }
  for (size_t i = 0; i < THREADS; i++) CHECK(pthread_join(th[i], NULL) == 0);
  CHECK(blockrep_tracker_cut(shared_tracker, &set) == BLOCKREP_STATUS_OK);
  total += drain(set, seen);
  CHECK(blockrep_blockset_free(set) == BLOCKREP_STATUS_OK);
  CHECK(total == BLOCKS);
  for (unsigned b = 0; b < BLOCKS; b++) CHECK(seen[b] == 1);
  CHECK(blockrep_tracker_free(shared_tracker) == BLOCKREP_STATUS_OK);
  puts("tracker C ABI: ok");
  return 0;
}
