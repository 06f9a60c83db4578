/* port_host.c: the device as a POSIX process. Its two UARTs are ptys; like QEMU it prints
 *   char device redirected to /dev/pts/N (label serial0)     the link
 *   char device redirected to /dev/pts/M (label serial1)     the console
 * on stderr, then runs the device loop. Flash is plain memory, and with --flash FILE it is also
 * written through to FILE (slot A, slot B, the boot record), which the next start loads: a
 * process killed mid-push is a power cut, and its restart boots what the flash holds. No
 * instruction counter (0). */
#define _XOPEN_SOURCE 600
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agn_device.h"
#include "agn_port.h"

typedef struct {
    int master, slave;
    uint8_t buf[512];
    size_t have, next;
} agn_host_uart_t;

static agn_host_uart_t agn_uarts[2];
static struct timespec agn_start;
static const char *agn_flash_path; /* NULL: flash is memory only */
static int agn_flash_fd = -1;

#define AGN_FLASH_FILE_BYTES (2u * AGN_SLOT_BYTES + AGN_BOOT_RECORD_BYTES)

static void agn_host_die(const char *what) {
    fprintf(stderr, "agn_host: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void agn_host_open(agn_host_uart_t *u, const char *label) {
    struct termios tio;
    const char *name;
    u->master = posix_openpt(O_RDWR | O_NOCTTY);
    if (u->master < 0 || grantpt(u->master) != 0 || unlockpt(u->master) != 0) agn_host_die("posix_openpt");
    name = ptsname(u->master);
    if (name == NULL) agn_host_die("ptsname");
    /* Holding the slave open keeps the master from reporting a hang-up before the host opens it. */
    u->slave = open(name, O_RDWR | O_NOCTTY);
    if (u->slave < 0) agn_host_die("open slave");
    if (tcgetattr(u->slave, &tio) == 0) {
        tio.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
        tio.c_oflag &= ~(tcflag_t)OPOST;
        tio.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        tio.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
        tio.c_cflag |= CS8;
        tio.c_cc[VMIN] = 1;
        tio.c_cc[VTIME] = 0;
        tcsetattr(u->slave, TCSANOW, &tio);
    }
    if (fcntl(u->master, F_SETFL, fcntl(u->master, F_GETFL) | O_NONBLOCK) != 0) agn_host_die("fcntl");
    fprintf(stderr, "char device redirected to %s (label %s)\n", name, label);
    fflush(stderr);
}

/* Loads the flash from the file if it holds a whole image of it, else makes it one with the built-in
 * contents: the first start of a device with a new file (a file of another size is not this flash). */
static void agn_host_open_flash(void) {
    uint32_t offset = 0;
    int i, whole;
    if (agn_flash_path == NULL) return;
    agn_flash_fd = open(agn_flash_path, O_RDWR | O_CREAT, 0644);
    if (agn_flash_fd < 0) agn_host_die(agn_flash_path);
    whole = lseek(agn_flash_fd, 0, SEEK_END) == (off_t)AGN_FLASH_FILE_BYTES;
    if (!whole && ftruncate(agn_flash_fd, (off_t)AGN_FLASH_FILE_BYTES) != 0) agn_host_die(agn_flash_path);
    for (i = 0; i < AGN_FLASH_REGIONS; i++) {
        ssize_t n = whole ? pread(agn_flash_fd, agn_flash_base(i), agn_flash_size(i), offset)
                          : pwrite(agn_flash_fd, agn_flash_base(i), agn_flash_size(i), offset);
        if (n != (ssize_t)agn_flash_size(i)) agn_host_die(agn_flash_path);
        offset += agn_flash_size(i);
    }
}

void agn_port_init(void) {
    clock_gettime(CLOCK_MONOTONIC, &agn_start);
    agn_host_open_flash();
    agn_host_open(&agn_uarts[0], "serial0");
    agn_host_open(&agn_uarts[1], "serial1");
}

static int agn_host_read(agn_host_uart_t *u) {
    if (u->next == u->have) {
        ssize_t n = read(u->master, u->buf, sizeof(u->buf));
        if (n <= 0) return -1; /* EAGAIN: nothing; EIO: nobody on the other end */
        u->have = (size_t)n;
        u->next = 0;
    }
    return u->buf[u->next++];
}

static void agn_host_write(agn_host_uart_t *u, const uint8_t *data, uint32_t length) {
    uint32_t done = 0;
    int stalls = 0;
    while (done < length) {
        ssize_t n = write(u->master, data + done, length - done);
        if (n > 0) {
            done += (uint32_t)n;
            stalls = 0;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) return; /* the line is gone: bytes are lost */
        if (++stalls > 20) {
            /* Nobody reads this line (a UART with nothing attached): old bytes are lost, as on a wire. */
            tcflush(u->slave, TCIFLUSH);
            stalls = 0;
        } else {
            struct pollfd p;
            p.fd = u->master;
            p.events = POLLOUT;
            p.revents = 0;
            poll(&p, 1, 5);
        }
    }
}

int agn_port_link_read(void) { return agn_host_read(&agn_uarts[0]); }
void agn_port_link_write(const uint8_t *data, uint32_t length) { agn_host_write(&agn_uarts[0], data, length); }
int agn_port_console_read(void) { return agn_host_read(&agn_uarts[1]); }
void agn_port_console_write(const uint8_t *data, uint32_t length) { agn_host_write(&agn_uarts[1], data, length); }

uint32_t agn_port_millis(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint32_t)((now.tv_sec - agn_start.tv_sec) * 1000 + (now.tv_nsec - agn_start.tv_nsec) / 1000000);
}

uint32_t agn_port_micros(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint32_t)((now.tv_sec - agn_start.tv_sec) * 1000000 + (now.tv_nsec - agn_start.tv_nsec) / 1000);
}

uint32_t agn_port_instructions(void) { return 0; }
uint32_t agn_port_instructions_elapsed(uint32_t start, uint32_t end) {
    (void)start;
    (void)end;
    return 0;
}
void agn_port_irq_disable(void) {}
void agn_port_irq_enable(void) {}

void agn_port_calibration_loop(uint32_t n) {
    volatile uint32_t i = n;
    while (i) i--;
}

void agn_port_idle(void) {
    struct pollfd p[2];
    int i;
    for (i = 0; i < 2; i++) {
        if (agn_uarts[i].next != agn_uarts[i].have) return;
        p[i].fd = agn_uarts[i].master;
        p[i].events = POLLIN;
        p[i].revents = 0;
    }
    if (poll(p, 2, 1) > 0) {
        for (i = 0; i < 2; i++) {
            if (p[i].revents & (POLLHUP | POLLERR)) { /* no reader yet: do not spin */
                struct timespec pause = {0, 1000000};
                nanosleep(&pause, NULL);
            }
        }
    }
}

uint32_t agn_port_seed(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint32_t)now.tv_nsec ^ ((uint32_t)now.tv_sec << 10) ^ ((uint32_t)getpid() << 20);
}

int agn_port_flash_write(uint8_t *dest, const uint8_t *src, uint32_t length) {
    int i, region = agn_flash_region(dest, length);
    uint32_t offset;
    if (region < 0) return -1;
    memmove(dest, src, length);
    offset = (uint32_t)(dest - agn_flash_base(region)); /* the file holds the regions in their order */
    for (i = 0; i < region; i++) offset += agn_flash_size(i);
    if (agn_flash_fd >= 0 && pwrite(agn_flash_fd, dest, length, offset) != (ssize_t)length) return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--flash") == 0) {
        agn_flash_path = argv[2];
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--flash FILE]\n", argv[0]);
        return 2;
    }
    agn_device_run();
    return 0;
}
