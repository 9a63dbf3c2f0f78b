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
      char msg_[512];                                                         \
      blockrep_last_error(msg_, sizeof msg_, NULL);                           \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #cond, msg_);                                         \
      exit(1);                                                                \
    }                                                                         \
  } while (0)

#endif
