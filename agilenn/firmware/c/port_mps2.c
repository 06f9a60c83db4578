/* port_mps2.c: the device on QEMU's mps2-an386 (Cortex-M4, 25 MHz).
 * UART0 (0x40004000) is the link, UART1 (0x40005000) the console: CMSDK APB UARTs whose receive
 * interrupts fill a ring buffer each. SysTick counts milliseconds; the CMSDK APB timer0
 * (0x40000000) runs free from 0xFFFFFFFF at 25 MHz and, under `-icount shift=AGN_ICOUNT_SHIFT`
 * (2^N ns of virtual time per instruction), counts instructions: instructions = round(ticks * 40 / 2^N)
 * over a region with no idling in it (2^N > 80 makes the rounding exact: see docs/FIRMWARE.md 3).
 * Flash is QEMU's RAM at 0x0, so a write is a copy (a real part would erase and program pages). */
#include <stdint.h>
#include "agn_port.h"

#ifndef AGN_ICOUNT_SHIFT
#define AGN_ICOUNT_SHIFT 7
#endif

#define AGN_REG(address) (*(volatile uint32_t *)(address))
#define UART_DATA 0x0u
#define UART_STATE 0x4u
#define UART_CTRL 0x8u
#define UART_INT 0xCu
#define UART_BAUDDIV 0x10u
#define UART_TX_FULL 1u
#define UART_RX_FULL 2u
#define TIMER0 0x40000000u
#define SYST_CSR 0xE000E010u
#define SYST_RVR 0xE000E014u
#define SYST_CVR 0xE000E018u
#define NVIC_ISER0 0xE000E100u
#define CORE_HZ 25000000u

typedef struct {
    uint32_t base;
    volatile uint8_t head, tail; /* ring of 256: head written by the interrupt, tail by the loop */
    uint8_t ring[256];
} agn_uart_t;

static agn_uart_t agn_link_uart = {0x40004000u, 0, 0, {0}};
static agn_uart_t agn_console_uart = {0x40005000u, 0, 0, {0}};
static volatile uint32_t agn_ms;

static void agn_uart_init(agn_uart_t *u) {
    AGN_REG(u->base + UART_BAUDDIV) = 16; /* QEMU transmits only with a divider of 16 or more */
    AGN_REG(u->base + UART_CTRL) = 1u | 2u | 8u; /* TX, RX, RX interrupt */
}

static void agn_uart_rx_isr(agn_uart_t *u) {
    AGN_REG(u->base + UART_INT) = 2u; /* clear first: a byte arriving after the loop raises it again */
    while (AGN_REG(u->base + UART_STATE) & UART_RX_FULL) {
        if ((uint8_t)(u->head + 1) == u->tail) return; /* full: the byte waits in the UART, QEMU holds the rest */
        u->ring[u->head] = (uint8_t)AGN_REG(u->base + UART_DATA);
        u->head = (uint8_t)(u->head + 1);
    }
}

void agn_uart0_rx_handler(void) { agn_uart_rx_isr(&agn_link_uart); }
void agn_uart1_rx_handler(void) { agn_uart_rx_isr(&agn_console_uart); }

static uint32_t agn_ticks_now(void) { return 0xFFFFFFFFu - AGN_REG(TIMER0 + 0x4u); }

void SysTick_Handler(void) { agn_ms++; }

void agn_port_init(void) {
    AGN_REG(TIMER0 + 0x0u) = 0;
    AGN_REG(TIMER0 + 0x8u) = 0xFFFFFFFFu;
    AGN_REG(TIMER0 + 0x4u) = 0xFFFFFFFFu;
    AGN_REG(TIMER0 + 0x0u) = 1u; /* enabled, no interrupt */
    agn_uart_init(&agn_link_uart);
    agn_uart_init(&agn_console_uart);
    AGN_REG(SYST_RVR) = CORE_HZ / 1000u - 1u;
    AGN_REG(SYST_CVR) = 0;
    AGN_REG(SYST_CSR) = 7u; /* processor clock, interrupt, enable */
    AGN_REG(NVIC_ISER0) = (1u << 0) | (1u << 2);
}

static int agn_uart_read(agn_uart_t *u) {
    int byte = -1;
    if (u->tail != u->head) {
        byte = u->ring[u->tail];
        u->tail = (uint8_t)(u->tail + 1);
        return byte;
    }
    __asm__ volatile("cpsid i" ::: "memory");
    if (u->tail == u->head && (AGN_REG(u->base + UART_STATE) & UART_RX_FULL)) {
        byte = (int)(AGN_REG(u->base + UART_DATA) & 0xFFu); /* what the full ring left in the UART */
    }
    __asm__ volatile("cpsie i" ::: "memory");
    return byte;
}

static void agn_uart_write(agn_uart_t *u, const uint8_t *data, uint32_t length) {
    uint32_t i;
    for (i = 0; i < length; i++) {
        while (AGN_REG(u->base + UART_STATE) & UART_TX_FULL) {
        }
        AGN_REG(u->base + UART_DATA) = data[i];
    }
}

int agn_port_link_read(void) { return agn_uart_read(&agn_link_uart); }
void agn_port_link_write(const uint8_t *data, uint32_t length) { agn_uart_write(&agn_link_uart, data, length); }
int agn_port_console_read(void) { return agn_uart_read(&agn_console_uart); }
void agn_port_console_write(const uint8_t *data, uint32_t length) { agn_uart_write(&agn_console_uart, data, length); }

uint32_t agn_port_millis(void) { return agn_ms; }

/* The millisecond count and how far SysTick has counted down into the next one. A tick that lands
 * between the two reads is seen as the count changing: read again. The product wraps mod 2^32 as
 * the result does, so differences stay right across the wrap. */
uint32_t agn_port_micros(void) {
    uint32_t ms, into;
    do {
        ms = agn_ms;
        into = CORE_HZ / 1000u - 1u - AGN_REG(SYST_CVR);
    } while (ms != agn_ms);
    return ms * 1000u + into / (CORE_HZ / 1000000u);
}

/* Ticks of 40 ns times 5: units of 8 ns. The product wraps with the timer (2^32 * 5 = 0 mod 2^32),
 * so differences stay right across the wrap, up to 34 s of virtual time apart. */
uint32_t agn_port_instructions(void) { return agn_ticks_now() * 5u; }

uint32_t agn_port_instructions_elapsed(uint32_t start, uint32_t end) {
    uint64_t ns = (uint64_t)(uint32_t)(end - start) * 8u;
    return (uint32_t)((ns + (1u << (AGN_ICOUNT_SHIFT - 1))) >> AGN_ICOUNT_SHIFT);
}

void agn_port_irq_disable(void) { __asm__ volatile("cpsid i" ::: "memory"); }
void agn_port_irq_enable(void) { __asm__ volatile("cpsie i" ::: "memory"); }

void agn_port_idle(void) {
    __asm__ volatile("cpsid i" ::: "memory");
    if (agn_link_uart.head == agn_link_uart.tail && agn_console_uart.head == agn_console_uart.tail &&
        !(AGN_REG(agn_link_uart.base + UART_STATE) & UART_RX_FULL) &&
        !(AGN_REG(agn_console_uart.base + UART_STATE) & UART_RX_FULL)) {
        __asm__ volatile("wfi" ::: "memory"); /* a pending interrupt wakes it even while masked */
    }
    __asm__ volatile("cpsie i" ::: "memory");
}

uint32_t agn_port_seed(void) { return agn_ticks_now() * 2654435761u ^ agn_ms; }

int agn_port_flash_write(uint8_t *dest, const uint8_t *src, uint32_t length) {
    uint32_t i;
    if (agn_flash_region(dest, length) < 0) return -1;
    if (dest < src) {
        for (i = 0; i < length; i++) dest[i] = src[i];
    } else {
        for (i = length; i > 0; i--) dest[i - 1] = src[i - 1];
    }
    return 0;
}
