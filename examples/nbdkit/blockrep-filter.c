/* blockrep-filter: an nbdkit filter that replicates the disk it serves.
 *
 * Every write, zero and trim passing through nbdkit is tracked through
 * blockrep's C ABI (a begin/end pair around the request, so a cycle that
 * is reading the blocks gets their old content first). A background
 * thread cuts a cycle every `blockrep-interval` milliseconds. The logs go
 * to a replica server on the secondary site (`blockrep-server`, over
 * mutual TLS, by blockrep's shipper on a thread of its own), or to a
 * replica directory on this machine (`blockrep-replica`, for a test). On
 * shutdown the filter cuts a last cycle, waits until it is shipped (at most
 * `blockrep-drain` seconds, 60 by default; what is left stays in the spool
 * for the next start) and stops the tracker cleanly.
 *
 *   nbdkit --filter=./blockrep-filter.so file disk.img \
 *       blockrep-disk=disk.img blockrep-spool=spool-dir \
 *       blockrep-server=dr.example:8443 blockrep-cert=host1.crt \
 *       blockrep-key=host1.key blockrep-ca=ca.crt \
 *       [blockrep-server-name=dr.example] [blockrep-tracker=tracker-file] \
 *       [blockrep-interval=200] [blockrep-bandwidth=BYTES_PER_SEC]
 *
 *   nbdkit --filter=./blockrep-filter.so file disk.img \
 *       blockrep-disk=disk.img blockrep-spool=spool-dir \
 *       blockrep-replica=replica-dir [blockrep-tracker=tracker-file]
 *
 * `blockrep-disk` must name the file the plugin serves: blockrep reads the
 * changed blocks from it directly.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "blockrep.h"

static const char *disk_path, *spool_dir, *replica_dir, *tracker_path;
static const char *server, *server_name, *cert_path, *key_path, *ca_path;
static unsigned interval_ms = 200, drain_secs = 60;
static uint64_t bandwidth;

static blockrep_pipeline *pipeline;
static blockrep_replica *replica;
static blockrep_shipper *shipper;
static pthread_t cycler;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static bool stopping, cycler_running;

/* Logs blockrep's message for a failed call; returns the status. */
static blockrep_status report(const char *what, blockrep_status s) {
  if (s != BLOCKREP_STATUS_OK) {
    size_t n = 0;
    blockrep_last_error(NULL, 0, &n); /* ask the size, then fill */
    char *msg = malloc(n + 1);
    if (msg != NULL && blockrep_last_error(msg, n + 1, &n) == BLOCKREP_STATUS_OK)
      nbdkit_error("blockrep: %s: status %u: %s", what, (unsigned)s, msg);
    else
      nbdkit_error("blockrep: %s: status %u", what, (unsigned)s);
    free(msg);
  }
  return s;
}

static int blockrep_config(nbdkit_next_config *next, nbdkit_backend *nxdata,
                           const char *key, const char *value) {
  if (strcmp(key, "blockrep-disk") == 0) disk_path = value;
  else if (strcmp(key, "blockrep-spool") == 0) spool_dir = value;
  else if (strcmp(key, "blockrep-replica") == 0) replica_dir = value;
  else if (strcmp(key, "blockrep-tracker") == 0) tracker_path = value;
  else if (strcmp(key, "blockrep-server") == 0) server = value;
  else if (strcmp(key, "blockrep-server-name") == 0) server_name = value;
  else if (strcmp(key, "blockrep-cert") == 0) cert_path = value;
  else if (strcmp(key, "blockrep-key") == 0) key_path = value;
  else if (strcmp(key, "blockrep-ca") == 0) ca_path = value;
  else if (strcmp(key, "blockrep-interval") == 0) {
    if (nbdkit_parse_unsigned("blockrep-interval", value, &interval_ms) == -1) return -1;
  } else if (strcmp(key, "blockrep-drain") == 0) {
    if (nbdkit_parse_unsigned("blockrep-drain", value, &drain_secs) == -1) return -1;
  } else if (strcmp(key, "blockrep-bandwidth") == 0) {
    if (nbdkit_parse_uint64_t("blockrep-bandwidth", value, &bandwidth) == -1) return -1;
  } else
    return next(nxdata, key, value);
  return 0;
}

static int blockrep_config_complete(nbdkit_next_config_complete *next,
                                    nbdkit_backend *nxdata) {
  if (!disk_path || !spool_dir || (!replica_dir == !server)) {
    nbdkit_error("blockrep: blockrep-disk, blockrep-spool and one of blockrep-server or "
                 "blockrep-replica are required");
    return -1;
  }
  if (server && (!cert_path || !key_path || !ca_path)) {
    nbdkit_error("blockrep: blockrep-server needs blockrep-cert, blockrep-key and blockrep-ca");
    return -1;
  }
  return next(nxdata);
}

/* The local transport: hands every unshipped log to the replica (with a
 * server, the shipper's thread does it). */
static int ship(void) {
  if (server) return 0;
  for (;;) {
    blockrep_spooled_log l;
    uint32_t found;
    if (report("next log", blockrep_pipeline_next_log(pipeline, &l, &found))) return -1;
    if (!found) return 0;
    char path[4096];
    size_t len;
    if (report("log path",
               blockrep_pipeline_log_path(pipeline, l.sequence, path, sizeof path, &len)))
      return -1;
    if (replica == NULL) {
      if (report("create replica", blockrep_replica_create(replica_dir, path, &replica)))
        return -1;
    } else if (report("apply", blockrep_replica_apply(replica, path, NULL, NULL))) {
      return -1;
    }
    if (report("ack", blockrep_pipeline_ack(pipeline, l.sequence, l.digest))) return -1;
  }
}

static int cycle_and_ship(void) {
  if (report("cycle", blockrep_pipeline_cycle(pipeline, 1, NULL, NULL))) return -1;
  return ship();
}

static void *cycler_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&lock);
  while (!stopping) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (long)(interval_ms % 1000) * 1000000L;
    until.tv_sec += interval_ms / 1000 + until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&wake, &lock, &until);
    if (stopping) break;
    pthread_mutex_unlock(&lock);
    /* A failed cycle keeps its blocks tracked; the next one retries. */
    cycle_and_ship();
    pthread_mutex_lock(&lock);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void shipper_log(void *ctx, const char *line) {
  (void)ctx;
  nbdkit_debug("blockrep shipper: %s", line);
}

static blockrep_shipper_config shipper_config(void) {
  blockrep_shipper_config c = {
      .server = server,
      .server_name = server_name,
      .certificate = cert_path,
      .key = key_path,
      .ca = ca_path,
      .bandwidth = {.limit = bandwidth},
      .log = shipper_log,
  };
  return c;
}

/* The disk's identity; a real integration stores the VM's disk id. */
static blockrep_disk_id filter_disk_id(void) {
  blockrep_disk_id id;
  memset(id.bytes, 0x42, sizeof id.bytes);
  return id;
}

/* Opens (or on the first run creates and fully copies) the pipeline and
 * the replica. */
static int blockrep_get_ready(int thread_model) {
  (void)thread_model;
  char state[4096];
  snprintf(state, sizeof state, "%s/spool.state", spool_dir);
  if (exists(state) && server) {
    /* The shipper asks the server what it holds and reconciles. */
    blockrep_open_state how;
    if (report("open pipeline", blockrep_pipeline_open(disk_path, spool_dir, 1ull << 30,
                                                       tracker_path, &how, &pipeline)))
      return -1;
    if (how == BLOCKREP_OPEN_INVALID) {
      /* Tracking was lost: the server's digests of what it holds, then a
       * resync log of the blocks that differ (shipped like any log). */
      char digests[4096];
      snprintf(digests, sizeof digests, "%s/digests", spool_dir);
      blockrep_shipper_config c = shipper_config();
      blockrep_disk_id id = filter_disk_id();
      if (report("fetch digests", blockrep_shipper_fetch_digests(&c, &id, digests)) ||
          report("resync", blockrep_pipeline_resync(pipeline, digests, NULL)))
        return -1;
    }
    return 0;
  }
  if (exists(state)) {
    blockrep_open_state how;
    if (report("open pipeline", blockrep_pipeline_open(disk_path, spool_dir, 1ull << 30,
                                                       tracker_path, &how, &pipeline)))
      return -1;
    snprintf(state, sizeof state, "%s/state", replica_dir);
    if (exists(state) && report("open replica", blockrep_replica_open(replica_dir, &replica)))
      return -1;
    if (replica) {
      /* Learn what the replica holds: logs it applied whose acknowledgement
       * was lost are acknowledged by their digest, not sent again. */
      blockrep_replica_info held;
      if (report("replica info", blockrep_replica_get_info(replica, &held)) ||
          report("reconcile", blockrep_pipeline_reconcile(pipeline, held.applied, held.digest)))
        return -1;
    }
    if (how == BLOCKREP_OPEN_INVALID) {
      /* Tracking was lost: compare digests and send what differs. */
      char digests[4096];
      snprintf(digests, sizeof digests, "%s/digests", spool_dir);
      if (!replica ||
          report("digests", blockrep_replica_block_digests(replica, digests)) ||
          report("resync", blockrep_pipeline_resync(pipeline, digests, NULL)))
        return -1;
    }
  } else {
    blockrep_disk_id id = filter_disk_id();
    if (report("create pipeline", blockrep_pipeline_create(disk_path, spool_dir, &id, 1, 4096,
                                                           1ull << 30, tracker_path, &pipeline)))
      return -1;
    if (report("initial sync", blockrep_pipeline_initial_sync(pipeline, NULL))) return -1;
  }
  return ship();
}

/* Threads must start after nbdkit forks into the background. */
static int blockrep_after_fork(nbdkit_backend *backend) {
  (void)backend;
  if (server) {
    blockrep_shipper_config c = shipper_config();
    if (report("start shipper", blockrep_shipper_start(pipeline, &c, &shipper))) return -1;
  }
  if (pthread_create(&cycler, NULL, cycler_main, NULL) != 0) {
    nbdkit_error("blockrep: cannot start the cycle thread");
    return -1;
  }
  cycler_running = true;
  return 0;
}

/* After the last connection: a final cycle ships everything, then the
 * tracker stops cleanly. */
static void blockrep_cleanup(nbdkit_backend *backend) {
  (void)backend;
  if (cycler_running) {
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    pthread_join(cycler, NULL);
    cycler_running = false;
  }
  if (pipeline) {
    cycle_and_ship();
    if (shipper) {
      /* The last cycle reaches the server, or stays spooled for later. */
      blockrep_shipper_status st;
      for (unsigned waited = 0; waited < drain_secs * 50; waited++) {
        if (blockrep_shipper_get_status(shipper, &st) != BLOCKREP_STATUS_OK ||
            st.pending_logs == 0)
          break;
        struct timespec ms20 = {0, 20000000L};
        nanosleep(&ms20, NULL);
      }
      report("stop shipper", blockrep_shipper_free(shipper));
      shipper = NULL;
    }
    report("close pipeline", blockrep_pipeline_close(pipeline));
    pipeline = NULL;
  }
  if (replica) {
    report("free replica", blockrep_replica_free(replica));
    replica = NULL;
  }
}

static int blockrep_pwrite(nbdkit_next *next, void *handle, const void *buf,
                           uint32_t count, uint64_t offset, uint32_t flags, int *err) {
  (void)handle;
  if (report("write begin", blockrep_pipeline_write_begin(pipeline, offset, count))) {
    *err = EIO;
    return -1;
  }
  int r = next->pwrite(next, buf, count, offset, flags, err);
  report("write end", blockrep_pipeline_write_end(pipeline, offset, count));
  return r;
}

static int blockrep_zero(nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
                         uint32_t flags, int *err) {
  (void)handle;
  if (report("zero begin", blockrep_pipeline_zero_begin(pipeline, offset, count))) {
    *err = EIO;
    return -1;
  }
  int r = next->zero(next, count, offset, flags, err);
  /* A failed zero may have zeroed part: mark the range as written. */
  if (r == -1) report("zero end", blockrep_pipeline_write_end(pipeline, offset, count));
  else report("zero end", blockrep_pipeline_zero_end(pipeline, offset, count));
  return r;
}

/* A trim may leave any content (plugins differ), so its range is tracked
 * as written: the cycle reads it and ships zeros as zero extents. */
static int blockrep_trim(nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
                         uint32_t flags, int *err) {
  (void)handle;
  if (report("trim begin", blockrep_pipeline_write_begin(pipeline, offset, count))) {
    *err = EIO;
    return -1;
  }
  int r = next->trim(next, count, offset, flags, err);
  report("trim end", blockrep_pipeline_write_end(pipeline, offset, count));
  return r;
}

static struct nbdkit_filter filter = {
    .name = "blockrep",
    .longname = "blockrep replication filter",
    .config = blockrep_config,
    .config_complete = blockrep_config_complete,
    .config_help = "blockrep-disk=PATH blockrep-spool=DIR "
                   "(blockrep-server=HOST:PORT blockrep-cert=PEM blockrep-key=PEM "
                   "blockrep-ca=PEM [blockrep-server-name=NAME] [blockrep-bandwidth=B/S] "
                   "[blockrep-drain=SECS] | blockrep-replica=DIR) "
                   "[blockrep-tracker=PATH] [blockrep-interval=MS]",
    .get_ready = blockrep_get_ready,
    .after_fork = blockrep_after_fork,
    .cleanup = blockrep_cleanup,
    .pwrite = blockrep_pwrite,
    .zero = blockrep_zero,
    .trim = blockrep_trim,
};

NBDKIT_REGISTER_FILTER(filter)
