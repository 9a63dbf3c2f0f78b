/* CHECK(cond): on failure print the condition, where, and blockrep's last
 * error message, then exit(1). Shared by the C tests. */
#ifndef BLOCKREP_TEST_CHECK_H
#define BLOCKREP_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "blockrep.h"

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      size_t n_ = 0;                                                          \
      blockrep_last_error(NULL, 0, &n_); /* ask the size, then fill */       \
      char *msg_ = malloc(n_ + 1);                                            \
      if (msg_ == NULL || blockrep_last_error(msg_, n_ + 1, &n_) != 0)        \
        msg_ = "?";                                                           \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #cond, msg_);                                         \
      exit(1);                                                                \
    }                                                                         \
  } while (0)

#endif
