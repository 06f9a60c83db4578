/* agn_port.h: what a platform gives the device (port_host.c: POSIX ptys; port_mps2.c: QEMU mps2-an386).
 *
 * Two UARTs: the link (the serial protocol to a gateway or pairing host) and the console (the
 * sensor and operator, docs/FIRMWARE.md section 3). Reads never block; writes wait for the UART to
 * take each byte. Weight storage: two slots of AGN_SLOT_BYTES in flash, agn_slot_a (generated in
 * agn_default_image.c with the default image, section .agn_slot_a) and agn_slot_b (agn_device.c,
 * section .agn_slot_b), plus the boot record (agn_device.c, section .agn_boot); they are read in
 * place and written only through agn_port_flash_write. */
#ifndef AGN_PORT_H
#define AGN_PORT_H
#include <stdint.h>
#include "agn_config.h"

void agn_port_init(void);
int agn_port_link_read(void);                                /* the next byte, or -1 if none */
void agn_port_link_write(const uint8_t *data, uint32_t length);
int agn_port_console_read(void);
void agn_port_console_write(const uint8_t *data, uint32_t length);
uint32_t agn_port_millis(void);                              /* milliseconds since boot, wrapping */
uint32_t agn_port_micros(void);                              /* microseconds since boot, wrapping */
/* A free-running counter (0 where the platform cannot count): on mps2, the 25 MHz timer in units of
 * 8 ns of virtual time. agn_port_instructions_elapsed turns the difference of two readings into
 * instructions, exact under QEMU -icount shift=AGN_ICOUNT_SHIFT when nothing idles in between. */
uint32_t agn_port_instructions(void);
uint32_t agn_port_instructions_elapsed(uint32_t start, uint32_t end);
void agn_port_irq_disable(void);                             /* around a measured region */
void agn_port_irq_enable(void);
/* Runs a loop of 2 n + 2 instructions for n >= 1 (cbz, n x (subs, bne), bx lr): the calibration of the count. */
void agn_port_calibration_loop(uint32_t n);
void agn_port_idle(void);                                    /* nothing to do: wait for a byte or a tick */
uint32_t agn_port_seed(void);                                /* some entropy for the link's epoch */
/* Writes flash: dest must lie inside a slot or the boot record. 0, or -1 outside them. */
int agn_port_flash_write(uint8_t *dest, const uint8_t *src, uint32_t length);

extern uint8_t agn_slot_a[AGN_SLOT_BYTES];
extern uint8_t agn_slot_b[AGN_SLOT_BYTES];
#define AGN_BOOT_RECORD_BYTES 32
extern uint8_t agn_boot_record[AGN_BOOT_RECORD_BYTES];

/* The flash regions, in the order a port keeps them (the host's --flash file too): 0 slot A,
 * 1 slot B, 2 the boot record. */
#define AGN_FLASH_REGIONS 3
static inline uint8_t *agn_flash_base(int region) {
    return region == 0 ? agn_slot_a : region == 1 ? agn_slot_b : agn_boot_record;
}
static inline uint32_t agn_flash_size(int region) { return region < 2 ? AGN_SLOT_BYTES : AGN_BOOT_RECORD_BYTES; }

/* The region [dest, dest + length) lies wholly inside, or -1: agn_port_flash_write refuses it. */
static inline int agn_flash_region(const uint8_t *dest, uint32_t length) {
    int i;
    for (i = 0; i < AGN_FLASH_REGIONS; i++) {
        uintptr_t d = (uintptr_t)dest, b = (uintptr_t)agn_flash_base(i);
        uint32_t size = agn_flash_size(i);
        if (d >= b && length <= size && d - b <= (uintptr_t)(size - length)) return i;
    }
    return -1;
}
#endif
