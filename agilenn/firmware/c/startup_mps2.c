/* startup_mps2.c: vector table and reset for the Cortex-M4 of QEMU's mps2-an386. The reset handler
 * copies .data from flash, zeroes .bss and runs the device. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern void agn_device_run(void);
void Reset_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);
void agn_uart0_rx_handler(void);
void agn_uart1_rx_handler(void);

typedef void (*agn_isr_t)(void);

/* 16 system exceptions, then IRQ 0 (UART0 RX: the link), 1 (UART0 TX), 2 (UART1 RX: the console), ... */
__attribute__((section(".isr_vector"), used)) const agn_isr_t agn_vectors[16 + 32] = {
    (agn_isr_t)&_estack, Reset_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler, SysTick_Handler,
    agn_uart0_rx_handler, Default_Handler, agn_uart1_rx_handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler,
};

void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    agn_device_run();
    for (;;) {
    }
}

void Default_Handler(void) {
    for (;;) {
    }
}

/* The calibration loop: cbz, then n times (subs, bne), then bx lr: 2 n + 2 instructions for n >= 1. */
__asm__(".section .text.agn_port_calibration_loop,\"ax\",%progbits\n"
        ".syntax unified\n"
        ".thumb\n"
        ".global agn_port_calibration_loop\n"
        ".type agn_port_calibration_loop, %function\n"
        ".thumb_func\n"
        "agn_port_calibration_loop:\n"
        "    cbz r0, 2f\n"
        "1:  subs r0, r0, #1\n"
        "    bne 1b\n"
        "2:  bx lr\n"
        ".size agn_port_calibration_loop, . - agn_port_calibration_loop\n");
