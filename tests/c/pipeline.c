/* The primary-side pipeline through the C ABI: create, initial sync,
 * write and zero begin/end pairs, cycles, shipping in chunks to a replica
 * fed chunk by chunk, status, digest resync, clean and unclean restarts,
 * every error path; then writer threads racing cycles, and the replica
 * equal to the disk at the end. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u
#define SIZE ((uint64_t)4 << 20)
#define WRITERS 4
#define WRITES 150

static blockrep_disk_id id;
static unsigned char buf[SIZE], got[SIZE];
static char dir[] = "/tmp/blockrep-c-pipe-XXXXXX";
static char disk_path[256], spool[256], tracker[256], rdir[256], digests[256];
static int disk_fd;

static unsigned next_rand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 8;
}

static void pwrite_all(const void *p, size_t len, uint64_t off) {
  CHECK(pwrite(disk_fd, p, len, (off_t)off) == (ssize_t)len);
}

/* Ships every unshipped log: the full one creates the replica from its
 * file; the others go through the chunked receive path. Returns logs. */
static unsigned ship(blockrep_pipeline *p, blockrep_replica **r) {
  unsigned n = 0;
  for (;;) {
    blockrep_spooled_log l;
    uint32_t found = 9;
    CHECK(blockrep_pipeline_next_log(p, &l, &found) == BLOCKREP_STATUS_OK);
    if (!found) return n;
    if (*r == NULL) {
      char path[512];
      size_t plen = 0;
      CHECK(blockrep_pipeline_log_path(p, l.sequence, path, 4, &plen) ==
            BLOCKREP_STATUS_INVALID_ARGUMENT); /* too small; length given */
      CHECK(plen > 4 && plen < sizeof path);
      CHECK(blockrep_pipeline_log_path(p, l.sequence, path, sizeof path, &plen) ==
            BLOCKREP_STATUS_OK);
      CHECK(strlen(path) == plen && l.kind == BLOCKREP_LOG_FULL);
      CHECK(blockrep_replica_create(rdir, path, r) == BLOCKREP_STATUS_OK);
    } else {
      blockrep_incoming *in = NULL;
      CHECK(blockrep_replica_receive(*r, &in) == BLOCKREP_STATUS_OK);
      unsigned char chunk[7000];
      for (uint64_t off = 0; off < l.bytes; off += sizeof chunk) {
        size_t len = l.bytes - off < sizeof chunk ? (size_t)(l.bytes - off) : sizeof chunk;
        CHECK(blockrep_pipeline_log_read(p, l.sequence, off, chunk, len) ==
              BLOCKREP_STATUS_OK);
        CHECK(blockrep_incoming_write(in, chunk, len) == BLOCKREP_STATUS_OK);
      }
      uint64_t seq = 0;
      uint32_t applied = 9;
      CHECK(blockrep_incoming_apply(in, &seq, &applied) == BLOCKREP_STATUS_OK);
      CHECK(seq == l.sequence && applied == 1);
    }
    CHECK(blockrep_pipeline_ack(p, l.sequence, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
    CHECK(blockrep_pipeline_ack(p, l.sequence, l.digest) == BLOCKREP_STATUS_OK);
    n++;
  }
}

/* The replica's latest point equals the disk file, byte for byte. */
static void check_equal(blockrep_replica *r, uint64_t seq) {
  blockrep_view *v = NULL;
  CHECK(blockrep_view_open(r, seq, &v) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_view_read(v, got, SIZE, 0) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_view_free(v) == BLOCKREP_STATUS_OK);
  CHECK(pread(disk_fd, buf, SIZE, 0) == (ssize_t)SIZE);
  CHECK(memcmp(buf, got, SIZE) == 0);
}

static uint64_t head(blockrep_pipeline *p) {
  blockrep_pipeline_status s;
  CHECK(blockrep_pipeline_get_status(p, &s) == BLOCKREP_STATUS_OK);
  return s.head_sequence;
}

struct writer {
  blockrep_pipeline *p;
  unsigned seed;
};

static atomic_int running;

static void *writer_main(void *arg) {
  struct writer *w = arg;
  unsigned char data[16384];
  for (int i = 0; i < WRITES; i++) {
    uint64_t len = 1 + next_rand(&w->seed) % sizeof data;
    uint64_t off = next_rand(&w->seed) % (SIZE - len);
    int zero = next_rand(&w->seed) % 4 == 0;
    for (uint64_t j = 0; j < len; j++) data[j] = zero ? 0 : (unsigned char)next_rand(&w->seed);
    if (zero) {
      CHECK(blockrep_pipeline_zero_begin(w->p, off, len) == BLOCKREP_STATUS_OK);
      pwrite_all(data, len, off);
      CHECK(blockrep_pipeline_zero_end(w->p, off, len) == BLOCKREP_STATUS_OK);
    } else {
      CHECK(blockrep_pipeline_write_begin(w->p, off, len) == BLOCKREP_STATUS_OK);
      pwrite_all(data, len, off);
      CHECK(blockrep_pipeline_write_end(w->p, off, len) == BLOCKREP_STATUS_OK);
    }
  }
  atomic_fetch_sub(&running, 1);
  return NULL;
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  snprintf(disk_path, sizeof disk_path, "%s/disk.img", dir);
  snprintf(spool, sizeof spool, "%s/spool", dir);
  snprintf(tracker, sizeof tracker, "%s/tracker", dir);
  snprintf(rdir, sizeof rdir, "%s/replica", dir);
  snprintf(digests, sizeof digests, "%s/digests", dir);
  memset(id.bytes, 7, sizeof id.bytes);
  disk_fd = open(disk_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CHECK(disk_fd >= 0);
  unsigned seed = 99;
  for (uint64_t i = 0; i < SIZE; i++)
    buf[i] = (i / BS) % 4 == 0 ? 0 : (unsigned char)next_rand(&seed);
  pwrite_all(buf, SIZE, 0);

  /* Creation and its errors. */
  blockrep_pipeline *p = NULL;
  CHECK(blockrep_pipeline_create(NULL, spool, &id, 1, BS, 1 << 30, tracker, &p) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_create(disk_path, spool, NULL, 1, BS, 1 << 30, tracker, &p) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_create(disk_path, spool, &id, 1, 1000, 1 << 30, tracker, &p) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT); /* not a power of two */
  CHECK(blockrep_pipeline_create(disk_path, spool, &id, 1, BS, 1 << 30, tracker, NULL) ==
        BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_create(disk_path, spool, &id, 1, BS, 1 << 30, tracker, &p) ==
        BLOCKREP_STATUS_OK);
  blockrep_pipeline *again = NULL;
  CHECK(blockrep_pipeline_create(disk_path, spool, &id, 1, BS, 1 << 30, NULL, &again) ==
        BLOCKREP_STATUS_MISUSE); /* the spool exists */

  blockrep_cycle_info info;
  CHECK(blockrep_pipeline_initial_sync(p, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.sequence == 1 && info.blocks == SIZE / BS && info.epoch == 1);
  CHECK(blockrep_pipeline_initial_sync(p, NULL) == BLOCKREP_STATUS_MISUSE);
  blockrep_replica *r = NULL;
  CHECK(ship(p, &r) == 1);
  check_equal(r, 1);

  /* Writes and zero writes; a range past the end is refused. */
  CHECK(blockrep_pipeline_write_begin(p, SIZE - 1, 2) == BLOCKREP_STATUS_OUT_OF_RANGE);
  CHECK(blockrep_pipeline_write_begin(p, 0, 0) == BLOCKREP_STATUS_OUT_OF_RANGE ||
        blockrep_pipeline_write_begin(p, 0, 0) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_write_begin(NULL, 0, 1) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  unsigned char data[3 * BS];
  memset(data, 0x5a, sizeof data);
  CHECK(blockrep_pipeline_write_begin(p, 1000, sizeof data) == BLOCKREP_STATUS_OK);
  pwrite_all(data, sizeof data, 1000);
  CHECK(blockrep_pipeline_write_end(p, 1000, sizeof data) == BLOCKREP_STATUS_OK);
  memset(data, 0, sizeof data);
  CHECK(blockrep_pipeline_zero_begin(p, 20 * BS, sizeof data) == BLOCKREP_STATUS_OK);
  pwrite_all(data, sizeof data, 20 * BS);
  CHECK(blockrep_pipeline_zero_end(p, 20 * BS, sizeof data) == BLOCKREP_STATUS_OK);

  CHECK(blockrep_pipeline_cycle(p, 3, NULL, &info) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_cycle(p, 2, "quiesced", &info) == BLOCKREP_STATUS_OK);
  CHECK(info.sequence == 2 && info.blocks == 4 + 3);
  blockrep_pipeline_status st;
  CHECK(blockrep_pipeline_get_status(p, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_pipeline_get_status(p, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.pending_logs == 1 && st.acked_sequence == 1 && st.head_sequence == 2);
  CHECK(st.oldest_pending_ns > 0 && st.resync_required == 0);
  unsigned char one[16];
  CHECK(blockrep_pipeline_log_read(p, 77, 0, one, sizeof one) ==
        BLOCKREP_STATUS_OUT_OF_RANGE); /* no such log */
  {
    uint8_t zero[32] = {0};
    CHECK(blockrep_pipeline_ack(p, 9, zero) == BLOCKREP_STATUS_MISUSE); /* past the head */
    /* Another log's content under the head's sequence: refused, typed. */
    CHECK(blockrep_pipeline_ack(p, 2, zero) == BLOCKREP_STATUS_MISMATCH);
    blockrep_error_detail d;
    CHECK(blockrep_last_error_detail(&d) == BLOCKREP_STATUS_OK);
    CHECK(d.detail == BLOCKREP_DETAIL_CONFLICT && d.value == 2);
    CHECK(memcmp(d.digest, zero, 32) != 0); /* the spooled log's digest */
    CHECK(blockrep_last_error_detail(NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
    CHECK(blockrep_last_error_detail(&d) == BLOCKREP_STATUS_OK);
    CHECK(d.detail == BLOCKREP_DETAIL_NONE); /* the null pointer's error has none */
  }
  {
    /* Handed out, then the transport reconnects: shipped again. */
    blockrep_spooled_log l;
    uint32_t found = 0;
    CHECK(blockrep_pipeline_next_log(p, &l, &found) == BLOCKREP_STATUS_OK && found);
    CHECK(blockrep_pipeline_next_log(p, &l, &found) == BLOCKREP_STATUS_OK && !found);
    CHECK(blockrep_pipeline_rewind(p) == BLOCKREP_STATUS_OK);
  }
  CHECK(ship(p, &r) == 1);
  check_equal(r, 2);
  blockrep_point pts[8];
  size_t npts = 0;
  CHECK(blockrep_replica_points(r, pts, 8, &npts) == BLOCKREP_STATUS_OK);
  CHECK(npts == 2 && pts[1].consistency == BLOCKREP_CONSISTENCY_APP);

  /* An abandoned transfer and a broken one change nothing. */
  blockrep_incoming *in = NULL;
  CHECK(blockrep_replica_receive(r, &in) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_incoming_write(in, data, 100) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_incoming_write(in, NULL, 1) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_incoming_free(in) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_incoming_free(in) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_replica_receive(r, &in) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_incoming_write(in, data, 100) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_incoming_apply(in, NULL, NULL) == BLOCKREP_STATUS_CORRUPT);
  check_equal(r, 2);

  /* Tracking lost: writes the pipeline never sees, then a digest resync
   * sends exactly those blocks, in a new epoch. */
  memset(data, 0xa5, sizeof data);
  pwrite_all(data, BS, 40 * BS);
  pwrite_all(data, BS, 41 * BS);
  pwrite_all(data, 10, 900 * BS + 5);
  CHECK(blockrep_replica_block_digests(r, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_replica_block_digests(r, digests) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_resync(p, rdir, NULL) != BLOCKREP_STATUS_OK); /* a directory */
  CHECK(blockrep_pipeline_resync(p, digests, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.blocks == 3 && info.epoch == 2 && info.sequence == 3);
  CHECK(ship(p, &r) == 1);
  check_equal(r, 3);

  /* A clean stop reopens clean; an unclean one recovers. */
  CHECK(blockrep_pipeline_write_begin(p, 0, 10) == BLOCKREP_STATUS_OK);
  pwrite_all("0123456789", 10, 0);
  CHECK(blockrep_pipeline_write_end(p, 0, 10) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_close(p) == BLOCKREP_STATUS_OK);
  blockrep_open_state state = 0;
  CHECK(blockrep_pipeline_open(disk_path, spool, 1 << 30, tracker, &state, &p) ==
        BLOCKREP_STATUS_OK);
  CHECK(state == BLOCKREP_OPEN_CLEAN);
  CHECK(blockrep_pipeline_cycle(p, 1, NULL, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.blocks == 1);
  CHECK(blockrep_pipeline_free(p) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_free(p) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_pipeline_open(disk_path, spool, 1 << 30, tracker, &state, &p) ==
        BLOCKREP_STATUS_OK);
  CHECK(state == BLOCKREP_OPEN_RECOVERED);
  {
    /* The transport asks the replica what it holds and tells the spool. */
    blockrep_replica_info ri;
    CHECK(blockrep_replica_get_info(r, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
    CHECK(blockrep_replica_get_info(r, &ri) == BLOCKREP_STATUS_OK);
    CHECK(ri.applied == 3 && ri.epoch == 2 && ri.block_size == BS && ri.size == SIZE);
    uint8_t other[32];
    memcpy(other, ri.digest, 32);
    other[0] ^= 1;
    CHECK(blockrep_pipeline_reconcile(p, ri.applied, other) == BLOCKREP_STATUS_MISMATCH);
    CHECK(blockrep_pipeline_reconcile(p, ri.applied, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
    CHECK(blockrep_pipeline_reconcile(p, ri.applied, ri.digest) == BLOCKREP_STATUS_OK);
  }
  CHECK(ship(p, &r) == 1); /* the spooled log survived */
  check_equal(r, 4);
  /* The spool is p's: a second pipeline on it is refused, untouched. */
  blockrep_pipeline *mem = NULL;
  CHECK(blockrep_pipeline_open(disk_path, spool, 1 << 30, NULL, &state, &mem) ==
        BLOCKREP_STATUS_MISUSE);
  CHECK(mem == NULL);

  /* Writer threads racing cycles; the transport ships as it goes. */
  pthread_t threads[WRITERS];
  struct writer ws[WRITERS];
  atomic_store(&running, WRITERS);
  for (int i = 0; i < WRITERS; i++) {
    ws[i].p = p;
    ws[i].seed = 1000u + (unsigned)i;
    CHECK(pthread_create(&threads[i], NULL, writer_main, &ws[i]) == 0);
  }
  unsigned cycles = 0;
  while (atomic_load(&running) > 0) {
    CHECK(blockrep_pipeline_cycle(p, 1, NULL, NULL) == BLOCKREP_STATUS_OK);
    cycles++;
    ship(p, &r);
  }
  for (int i = 0; i < WRITERS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
  CHECK(blockrep_pipeline_cycle(p, 1, NULL, NULL) == BLOCKREP_STATUS_OK);
  ship(p, &r);
  CHECK(cycles > 0);
  check_equal(r, head(p));

  CHECK(blockrep_pipeline_close(p) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_close(NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);

  /* A write while nothing tracked: the reopen says tracking was lost, and
   * a digest resync sends exactly what changed. */
  pwrite_all("unseen", 6, 3 * BS + 7);
  CHECK(blockrep_pipeline_open(disk_path, spool, 1 << 30, tracker, &state, &p) ==
        BLOCKREP_STATUS_OK);
  CHECK(state == BLOCKREP_OPEN_INVALID);
  CHECK(blockrep_replica_block_digests(r, digests) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_resync(p, digests, &info) == BLOCKREP_STATUS_OK);
  CHECK(info.blocks == 1);
  CHECK(ship(p, &r) == 1);
  check_equal(r, head(p));
  CHECK(blockrep_pipeline_close(p) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_replica_free(r) == BLOCKREP_STATUS_OK);
  close(disk_fd);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  puts("pipeline: ok");
  return 0;
}
