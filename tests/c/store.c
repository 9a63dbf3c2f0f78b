/* The object store through the C ABI: a pipeline on a disk file shipped
 * to an S3 server (s3s-fs, started by tests/c_abi.rs; its endpoint in
 * BLOCKREP_S3 and a work directory in BLOCKREP_DIR), sealed with key bytes
 * the program holds; a second primary with the same disk fenced; the
 * replica hydrated back through the ABI, and refused with the wrong key.
 * The harness compares the hydrated image with the disk file. */
#define _POSIX_C_SOURCE 200809L
#include "blockrep.h"
#include "check.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((uint64_t)4 << 20)

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

int main(void) {
  const char *endpoint = getenv("BLOCKREP_S3"), *dir = getenv("BLOCKREP_DIR");
  CHECK(endpoint != NULL && dir != NULL);
  char disk_path[512], spool[512], spool2[512], hydrated[512], wrong_dir[512];

  blockrep_disk_id id;
  memset(&id, 0, sizeof id);
  unsigned pid = (unsigned)getpid(), seed = pid;
  memcpy(id.bytes, &pid, sizeof pid);
  id.bytes[15] = 0x53;
  char hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", id.bytes[i]);
  snprintf(disk_path, sizeof disk_path, "%s/disk-%s.img", dir, hex);
  snprintf(spool, sizeof spool, "%s/spool-%s", dir, hex);
  snprintf(spool2, sizeof spool2, "%s/spool2-%s", dir, hex);
  snprintf(hydrated, sizeof hydrated, "%s/hydrated-%s", dir, hex);
  snprintf(wrong_dir, sizeof wrong_dir, "%s/wrong-%s", dir, hex);

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

  uint8_t key[32], other[32];
  for (int i = 0; i < 32; i++) {
    key[i] = (uint8_t)(i * 7 + 1);
    other[i] = (uint8_t)(i * 7 + 2);
  }
  blockrep_store_option opts[] = {
      {"aws_endpoint", endpoint},
      {"aws_allow_http", "true"},
      {"aws_access_key_id", "AKTEST"},
      {"aws_secret_access_key", "SKTEST"},
      {"aws_region", "us-east-1"},
  };
  blockrep_store_config store = {
      .url = "s3://brtest/c",
      .options = opts,
      .options_len = sizeof opts / sizeof opts[0],
      .key = key,
      .key_len = sizeof key,
      .timeout_ms = 10000,
  };
  blockrep_store_shipper_config c = {.store = store};
  memset(c.writer_id, 0xa1, sizeof c.writer_id);
  blockrep_store_shipper *s = NULL;

  /* Refusals: nulls, a key of the wrong size, a URL of another scheme. */
  CHECK(blockrep_store_shipper_start(NULL, &c, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_store_shipper_start(p, NULL, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  CHECK(blockrep_store_shipper_start(p, &c, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);
  blockrep_store_shipper_config wrong = c;
  wrong.store.key_len = 31;
  CHECK(blockrep_store_shipper_start(p, &wrong, &s) == BLOCKREP_STATUS_INVALID_ARGUMENT && s == NULL);
  wrong = c;
  wrong.store.url = "ftp://brtest/c";
  CHECK(blockrep_store_shipper_start(p, &wrong, &s) == BLOCKREP_STATUS_UNSUPPORTED && s == NULL);

  CHECK(blockrep_store_shipper_start(p, &c, &s) == BLOCKREP_STATUS_OK && s != NULL);
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
  blockrep_store_shipper_status st;
  for (int waited = 0;; waited += 20) {
    CHECK(blockrep_store_shipper_get_status(s, &st) == BLOCKREP_STATUS_OK);
    if (st.pending_logs == 0) break;
    CHECK(waited < 120000);
    sleep_ms(20);
  }
  CHECK(st.logs_shipped == 4 && !st.failing && !st.fenced && st.has_rpo && st.generation == 4);
  size_t n = 1;
  CHECK(blockrep_store_shipper_last_error(s, NULL, 0, &n) == BLOCKREP_STATUS_OK && n == 0);
  CHECK(blockrep_store_shipper_get_status((blockrep_store_shipper *)p, &st) == BLOCKREP_STATUS_MISUSE);
  CHECK(blockrep_store_shipper_free(s) == BLOCKREP_STATUS_OK);

  /* A second primary with the same disk and another writer id: fenced. */
  blockrep_pipeline *p2 = NULL;
  CHECK(blockrep_pipeline_create(disk_path, spool2, &id, 1, 4096, 64 << 20, NULL, &p2) ==
        BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_initial_sync(p2, &info) == BLOCKREP_STATUS_OK);
  blockrep_store_shipper_config c2 = c;
  memset(c2.writer_id, 0xb2, sizeof c2.writer_id);
  blockrep_store_shipper *s2 = NULL;
  CHECK(blockrep_store_shipper_start(p2, &c2, &s2) == BLOCKREP_STATUS_OK);
  for (int waited = 0;; waited += 20) {
    CHECK(blockrep_store_shipper_get_status(s2, &st) == BLOCKREP_STATUS_OK);
    if (st.fenced) break;
    CHECK(waited < 60000);
    sleep_ms(20);
  }
  char msg[1024];
  CHECK(blockrep_store_shipper_last_error(s2, msg, sizeof msg, &n) == BLOCKREP_STATUS_OK);
  CHECK(strstr(msg, "a1a1a1a1") != NULL);
  CHECK(blockrep_store_shipper_free(s2) == BLOCKREP_STATUS_OK);
  CHECK(blockrep_pipeline_close(p2) == BLOCKREP_STATUS_OK);

  /* Back from the store: the latest point; the wrong key refused. */
  uint64_t seq = 0;
  CHECK(blockrep_store_hydrate(&store, &id, hydrated, 0, &seq) == BLOCKREP_STATUS_OK && seq == 4);
  blockrep_store_config bad = store;
  bad.key = other;
  CHECK(blockrep_store_hydrate(&bad, &id, wrong_dir, 0, &seq) == BLOCKREP_STATUS_MISMATCH);
  CHECK(blockrep_store_hydrate(&store, &id, hydrated, 0, NULL) == BLOCKREP_STATUS_INVALID_ARGUMENT);

  CHECK(blockrep_pipeline_close(p) == BLOCKREP_STATUS_OK);
  close(fd);
  return 0;
}
