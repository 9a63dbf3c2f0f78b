/* The shipper through the C ABI: a pipeline on a disk file shipped to a
 * replica server (started by tests/c_abi.rs, its address and the
 * certificates' directory in BLOCKREP_SERVER and BLOCKREP_DIR) over
 * mutual TLS: start, cycles shipped, status, last error, log lines, the
 * bandwidth and its schedule, and the refusals of bad input. The harness
 * compares the server's replica with the disk file afterwards. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((uint64_t)4 << 20)

static atomic_int lines;

static void on_log(void *ctx, const char *line) {
  CHECK(ctx == (void *)&lines && line != NULL);
  atomic_fetch_add(&lines, 1);
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

int main(void) {
  const char *server = getenv("BLOCKREP_SERVER"), *dir = getenv("BLOCKREP_DIR");
  CHECK(server != NULL && dir != NULL);
  char cert[512], key[512], ca[512], disk_path[512], spool[512], bad[512];
  snprintf(cert, sizeof cert, "%s/host1.crt", dir);
  snprintf(key, sizeof key, "%s/host1.key", dir);
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  snprintf(bad, sizeof bad, "%s/missing.key", dir);

  /* A disk id of this run: each run replicates a disk of its own. */
  blockrep_disk_id id;
  memset(&id, 0, sizeof id);
  unsigned pid = (unsigned)getpid(), seed = pid;
  memcpy(id.bytes, &pid, sizeof pid);
  id.bytes[15] = 0xc5;
  char hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", id.bytes[i]);
  snprintf(disk_path, sizeof disk_path, "%s/disk-%s.img", dir, hex);
  snprintf(spool, sizeof spool, "%s/spool-%s", dir, hex);

  static unsigned char data[SIZE];
  for (size_t i = 0; i < SIZE / 4; i++) {
    seed = seed * 1103515245u + 12345u;
    data[i] = (unsigned char)(seed >> 16);
  }
  int fd = open(disk_path, O_CREAT | O_RDWR | O_TRUNC, 0600);
  CHECK(fd >= 0 && pwrite(fd, data, SIZE, 0) == (ssize_t)SIZE);
  blockrep_pipeline *p = NULL;
  CHECK(blockrep_pipeline_create(disk_path, spool, &id, 1, 4096, 64 << 20, NULL, &p) ==
        BLOCKREP_STATUS_OK);
  blockrep_cycle_info info;
  CHECK(blockrep_pipeline_initial_sync(p, &info) == BLOCKREP_STATUS_OK);

  /* Every day, all day, unlimited; 1 byte a second outside (never). */
  blockrep_bandwidth_window all_day = {0x7f, 0, 1440, 0};
  blockrep_shipper_config c = {
      .server = server,
      .server_name = "localhost",
      .certificate = cert,
      .key = key,
      .ca = ca,
      .timeout_ms = 20000,
      .bandwidth = {.limit = 1, .windows = &all_day, .windows_len = 1},
      .log = on_log,
      .log_ctx = &lines,
  };
  blockrep_shipper *s = NULL;

  /* Refusals: nulls, a missing key file (named, never its contents), a
   * schedule with no days, an address that is not one. */
  CHECK(blockrep_shipper_start(NULL, &c, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_shipper_start(p, NULL, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_shipper_start(p, &c, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  blockrep_shipper_config wrong = c;
  wrong.key = bad;
  CHECK(blockrep_shipper_start(p, &wrong, &s) == BLOCKREP_STATUS_IO && s == NULL);
  char msg[1024];
  size_t n = 0;
  CHECK(blockrep_last_error(msg, sizeof msg, &n) == BLOCKREP_STATUS_OK);
  CHECK(strstr(msg, "missing.key") != NULL && strstr(msg, "BEGIN") == NULL);
  wrong = c;
  blockrep_bandwidth_window never = {0, 0, 60, 0};
  wrong.bandwidth.windows = &never;
  CHECK(blockrep_shipper_start(p, &wrong, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  wrong = c;
  wrong.server = "not an address";
  CHECK(blockrep_shipper_start(p, &wrong, &s) != BLOCKREP_STATUS_OK && s == NULL);

  CHECK(blockrep_shipper_start(p, &c, &s) == BLOCKREP_STATUS_OK && s != NULL);
  for (int round = 0; round < 3; round++) {
    for (int w = 0; w < 20; w++) {
      seed = seed * 1103515245u + 12345u;
      uint64_t off = (uint64_t)(seed >> 8) % (SIZE - 8192);
      unsigned char b[8192];
      for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)(round * 31 + w + i);
      CHECK(blockrep_pipeline_write_begin(p, off, sizeof b) == BLOCKREP_STATUS_OK);
      CHECK(pwrite(fd, b, sizeof b, (off_t)off) == (ssize_t)sizeof b);
      CHECK(blockrep_pipeline_write_end(p, off, sizeof b) == BLOCKREP_STATUS_OK);
    }
    CHECK(blockrep_pipeline_cycle(p, BLOCKREP_CONSISTENCY_CRASH, NULL, &info) == BLOCKREP_STATUS_OK);
  }
  blockrep_shipper_status st;
  for (int waited = 0;; waited += 20) {
    CHECK(blockrep_shipper_get_status(s, &st) == BLOCKREP_STATUS_OK);
    if (st.pending_logs == 0) break;
    CHECK(waited < 120000);
    sleep_ms(20);
  }
  CHECK(st.logs_shipped == 4 && st.connected && !st.failing && st.has_rpo);
  CHECK(st.bandwidth_limit == 0 && st.bytes_sent > 0 && st.bytes_resent == 0);
  CHECK(blockrep_shipper_last_error(s, NULL, 0, &n) == BLOCKREP_STATUS_OK && n == 0);

  /* The bandwidth, changed while running; a bad schedule is refused and
   * changes nothing. */
  blockrep_bandwidth limited = {.limit = 1 << 20};
  CHECK(blockrep_shipper_set_bandwidth(s, &limited) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_shipper_get_status(s, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.bandwidth_limit == (1 << 20));
  blockrep_bandwidth broken = {.limit = 5, .windows = &never, .windows_len = 1};
  CHECK(blockrep_shipper_set_bandwidth(s, &broken) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_shipper_set_bandwidth(s, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_shipper_get_status(s, &st) == BLOCKREP_STATUS_OK);
  CHECK(st.bandwidth_limit == (1 << 20));
  CHECK(blockrep_shipper_get_status(NULL, &st) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_shipper_get_status((blockrep_shipper *)p, &st) == BLOCKREP_STATUS_MISUSE);

  CHECK(blockrep_shipper_free(s) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_close(p) == BLOCKREP_STATUS_OK);
  close(fd);
  return 0;
}
