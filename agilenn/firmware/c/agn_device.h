/* agn_device.h: the device: pairing with A/B slots and a boot record, the compact session, the
 * console commands (docs/FIRMWARE.md section 3) and the main loop. */
#ifndef AGN_DEVICE_H
#define AGN_DEVICE_H
#include <stdint.h>

#ifndef AGN_TARGET
#define AGN_TARGET "unknown"
#endif
#define AGN_FIRMWARE "agilenn-c99/1 " AGN_TARGET

/* Console commands and responses. */
#define AGN_CMD_VERIFY 0x01
#define AGN_CMD_CLASSIFY 0x02
#define AGN_CMD_PAIR 0x03
#define AGN_CMD_STATUS 0x04
#define AGN_CMD_CALIBRATE 0x05
#define AGN_RSP_ERROR 0xEE

#define AGN_PAIR_SAME 0
#define AGN_PAIR_UPDATED 1
#define AGN_PAIR_REFUSED 2
#define AGN_PAIR_FAILED 3

#define AGN_OFFLOAD_TIMEOUT_MS 2000u
#define AGN_PAIR_BACKOFF_MS 200u
#define AGN_CONSOLE_TIMEOUT_MS 1000u  /* a request whose next byte does not come within this is dropped */

typedef struct {
    uint32_t pushes_applied, pushes_failed, offloaded, local;
    uint32_t link_dropped;       /* link messages nobody waited for, or unreadable */
    uint32_t console_timeouts, console_unknown;
} agn_device_stats_t;

void agn_device_init(void);
/* One round of the main loop; nonzero if it did some work. */
int agn_device_step(void);
void agn_device_run(void);
const agn_device_stats_t *agn_device_stats(void);
#endif
