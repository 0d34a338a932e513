/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * mekha: the boundary between QEMU and the mekha Rust library.
 *
 * This header is the single source of truth for both directions:
 *  - mekha_qemu_*: implemented by QEMU (migration/mekha.c), called by Rust;
 *    the Rust declarations are generated from this file by bindgen.
 *  - mekha_*: implemented by the Rust library, called by QEMU; the Rust
 *    definitions are checked against the bindgen declarations at build time.
 *
 * Strings crossing the boundary are NUL-terminated UTF-8.  A string returned
 * by the library is owned by the caller and freed with mekha_string_free();
 * a string passed in is borrowed for the duration of the call only.
 */
#ifndef MEKHA_H
#define MEKHA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of this header. */
#define MEKHA_ABI_VERSION 7

/* ---- QEMU -> library ------------------------------------------------- */

/*
 * Returns MEKHA_ABI_VERSION as the library was built; QEMU refuses to use a
 * library built against another version of this header.
 */
uint32_t mekha_abi_version(void);

/* Status of mekha_qmp_command(). */
typedef enum MekhaStatus {
    MEKHA_OK = 0,
    /* Arguments or state make the command fail; reply is a message. */
    MEKHA_ERROR = 1,
} MekhaStatus;

/*
 * Answer the QMP command @name (without the downstream prefix, e.g.
 * "query-info").  @args_json is the command's arguments as a JSON object
 * (never NULL).  On MEKHA_OK, *@reply is the JSON value to return; on
 * MEKHA_ERROR it is a human-readable message.  *@reply is always set and is
 * freed with mekha_string_free().  Called from the main loop with the BQL
 * held: it must not block.
 */
MekhaStatus mekha_qmp_command(const char *name, const char *args_json,
                              char **reply);

/* Free a string returned by the library.  NULL is ignored. */
void mekha_string_free(char *s);

/*
 * The VM started (@running) or stopped running.  Called from the main
 * loop with the BQL held, once mekha_qemu_watch_run_state() was called:
 * it must not block.
 */
void mekha_vm_run_state(bool running);

/*
 * The machine is built (its NICs and netdevs exist).  Called once from
 * the main loop with the BQL held.
 */
void mekha_machine_ready(void);

struct MekhaNetdev;

/* What a hold filter does with a frame toward the guest. */
typedef enum MekhaNetVerdict {
    /* On toward the guest, held if the filter holds. */
    MEKHA_NET_PASS = 0,
    /* Consumed: the guest never sees it. */
    MEKHA_NET_DROP = 1,
    /* Held, and every later frame too, until the hold is released. */
    MEKHA_NET_HOLD = 2,
} MekhaNetVerdict;

/*
 * A frame toward the guest reached the hold filter of @netdev, before
 * it is passed on or held; @data (the netdev's vnet_hdr_len bytes of
 * virtio-net header, then the Ethernet frame) is valid only during the
 * call.  MEKHA_NET_FRAME_* @flags.  Called from the main loop with the
 * BQL held, for every frame: it must be quick and must not block.
 */
MekhaNetVerdict mekha_net_frame(const struct MekhaNetdev *netdev,
                                uint32_t flags, const uint8_t *data,
                                size_t len);

/* ---- library -> QEMU ------------------------------------------------- */

/* Flags of a RAM block. */
#define MEKHA_RAM_SHARED      (1u << 0) /* MAP_SHARED (memory-backend share=on) */
#define MEKHA_RAM_FILE        (1u << 1) /* backed by a file or memfd */
#define MEKHA_RAM_MIGRATABLE  (1u << 2) /* part of the migration stream */
#define MEKHA_RAM_NORESERVE   (1u << 3) /* no swap reserved */

/* A RAM block as QEMU sees it; valid only during the callback. */
typedef struct MekhaRamBlock {
    const char *name;      /* RAMBlock idstr, e.g. "pc.ram" */
    uint64_t used_length;  /* bytes in use by the guest */
    uint64_t max_length;   /* bytes reserved (resizeable blocks) */
    uint64_t page_size;    /* host page size backing the block */
    uint32_t flags;        /* MEKHA_RAM_* */
    int32_t fd;            /* backing file descriptor, or -1 */
    void *host;            /* host virtual address of the block */
} MekhaRamBlock;

/* Called once per RAM block; return non-zero to stop the walk. */
typedef int (*MekhaRamBlockFn)(const MekhaRamBlock *block, void *opaque);

/*
 * Walk QEMU's RAM blocks in QEMU's order.  Returns the first non-zero value
 * @fn returned, or 0.  Safe from any thread (takes the RCU read lock).
 */
int mekha_qemu_foreach_ram_block(MekhaRamBlockFn fn, void *opaque);

/* A disk of the VM: a block backend attached to a device. */
typedef struct MekhaDisk {
    const char *device;  /* the device's id or QOM path */
    const char *node;    /* the root node's name, "" without a medium */
    bool writable;       /* the guest can write it */
    bool inserted;       /* a medium is present */
    const char *format;  /* the root node's driver, "" without a medium */
    int64_t size;        /* virtual size in bytes, negative errno if unknown */
    bool shared_write;   /* another user may write it too (share-rw) */
} MekhaDisk;

typedef int (*MekhaDiskFn)(const MekhaDisk *disk, void *opaque);

/*
 * Call @fn for each disk; stop early and return its value when non-zero.
 * BQL held; the strings are valid during the call only.
 */
int mekha_qemu_foreach_disk(MekhaDiskFn fn, void *opaque);

/*
 * Run one QMP command in-process, as a monitor would: @request_json is
 * {"execute": ..., "arguments": ...}; returns the response object as JSON
 * ({"return": ...} or {"error": ...}; free with mekha_qemu_free).  BQL
 * held, outside any QMP command's handler (a command inside another gets
 * an error response).
 */
char *mekha_qemu_qmp_execute(const char *request_json);

typedef int (*MekhaExtentFn)(int64_t offset, int64_t len, void *opaque);

/*
 * Call @fn for each dirty extent of @node's dirty bitmap @bitmap, in
 * order; stop early and return its value when non-zero.  -1 and *@err
 * when there is no such node or bitmap.  BQL held.
 */
int mekha_qemu_dirty_extents(const char *node, const char *bitmap,
                             MekhaExtentFn fn, void *opaque, char **err);

/*
 * Write @len bytes of @data at @offset of the disk of @device (see
 * MekhaDisk), or zeroes (unmapping where the format can) when @data is
 * NULL, through the device's backend.  BQL held, disks active.  -1 and
 * *@err on failure.
 */
int mekha_qemu_disk_write(const char *device, uint64_t offset,
                          const uint8_t *data, size_t len, char **err);

/*
 * Drain the block node @node once, so that a job started on it in an
 * iothread's context has set itself up.  BQL held.  -1 and *@err when
 * there is no such node.
 */
int mekha_qemu_disk_settle(const char *node, char **err);

/*
 * Activate the disks of an incoming VM (taking their locks) ahead of
 * mekha_qemu_incoming_finish(), which then finds them active.  -1 and
 * *@err when a disk cannot be activated.  BQL held.
 */
int mekha_qemu_disks_activate(char **err);

/* Facts about this QEMU process; the strings live as long as the process. */
typedef struct MekhaVmIdentity {
    const char *qemu_version; /* e.g. "10.0.2" */
    const char *vm_name;      /* -name guest=..., or NULL when unnamed */
    const char *machine;      /* machine type, e.g. "pc-i440fx-10.0" */
    const char *accelerator;  /* "tcg", "kvm", ... */
} MekhaVmIdentity;

/* Fill @id.  Call from the main loop or with the BQL held. */
void mekha_qemu_vm_identity(MekhaVmIdentity *id);

/* Free memory QEMU returned to the library (error strings). */
void mekha_qemu_free(void *p);

/* ---- threads and locks ---- */

/*
 * A library thread that calls into QEMU registers with QEMU's RCU first
 * and unregisters before it exits.
 */
void mekha_qemu_thread_register(void);
void mekha_qemu_thread_unregister(void);

/* QEMU's big lock, for the calls below that say "BQL held". */
void mekha_qemu_bql_lock(void);
void mekha_qemu_bql_unlock(void);

/* Run @fn(@opaque) soon in QEMU's main loop, with the BQL held. */
void mekha_qemu_main_loop_call(void (*fn)(void *), void *opaque);

/* ---- events ---- */

typedef enum MekhaEvent {
    MEKHA_EVENT_CHECKPOINT = 0, /* __org.mekha_CHECKPOINT */
    MEKHA_EVENT_RESTORE = 1,    /* __org.mekha_RESTORE */
} MekhaEvent;

/*
 * Send a QMP event; @data_json is its data object, which must match the
 * event's QAPI type.  Any thread.
 */
void mekha_qemu_emit_event(MekhaEvent event, const char *data_json);

/* ---- checkpoint (all BQL held) ---- */

/*
 * Prepare a checkpoint: refuse when the VM is not running or a migration
 * runs, block migrations, start dirty logging.  On error returns -1 and a
 * message in *@err (free with mekha_qemu_free).
 */
int mekha_qemu_checkpoint_begin(char **err);
/* Undo mekha_qemu_checkpoint_begin(). */
void mekha_qemu_checkpoint_end(void);

/* Pull the accelerator's dirty log (KVM) into QEMU's bitmaps. */
void mekha_qemu_dirty_log_sync(void);

/*
 * Fetch and clear the dirty bits of RAM block @block: @bitmap gets one bit
 * per 4 KiB page of the block (LSB first in each word), set when the page
 * was written since the previous fetch.  @pages must be the block's used
 * length in pages.  Returns -1 when the block is unknown or has another
 * size.
 */
int mekha_qemu_dirty_log_fetch(const char *block, uint64_t *bitmap,
                               uint64_t pages);

/* Stop the vCPUs (run state save-vm); -1 and *@err on failure. */
int mekha_qemu_vm_stop(char **err);
/* Resume the vCPUs. */
void mekha_qemu_vm_start(void);
/* True while the VM runs (someone may resume it while the BQL is free). */
bool mekha_qemu_vm_is_running(void);

/* Receives a byte buffer valid only during the call. */
typedef void (*MekhaBytesFn)(const uint8_t *data, size_t len, void *opaque);

/*
 * Save every device's state (no RAM) with the VM stopped and hand it to
 * @sink.  -1 and *@err on failure.
 */
int mekha_qemu_save_devices(MekhaBytesFn sink, void *opaque, char **err);

/* ---- restore (all BQL held) ---- */

/* True when QEMU waits for an incoming state (-incoming defer) unused. */
bool mekha_qemu_incoming_pending(void);

/* Load a device state saved by mekha_qemu_save_devices(). */
int mekha_qemu_load_devices(const uint8_t *data, size_t len, char **err);

/*
 * Finish an incoming restore: activate the disks (taking their locks),
 * announce the NICs, then resume the VM when @start, else leave it
 * paused.  -1 and *@err when a disk cannot be activated: the VM stays
 * in the incoming state and never runs.
 */
int mekha_qemu_incoming_finish(bool start, char **err);

/*
 * Resume a VM that a restore left paused, activating its disks, as 'cont'
 * does.  -1 and *@err when it is neither paused nor running.
 */
int mekha_qemu_vm_resume(char **err);

/*
 * Ask QEMU to exit (cause host-error, also under -no-shutdown, as 'quit'
 * does), as a restored VM that must never run does.
 */
void mekha_qemu_shutdown_request(void);

/* How bad what the library reports is. */
typedef enum MekhaReport {
    MEKHA_REPORT_ERROR = 0,
    MEKHA_REPORT_WARNING = 1,
    MEKHA_REPORT_INFO = 2,
} MekhaReport;

/*
 * Report @message through QEMU's error reporting (error_report and
 * friends: prefixed, timestamped with -msg timestamp=on).  Any thread.
 */
void mekha_qemu_report(MekhaReport level, const char *message);

/*
 * The bytes of QEMU's 'secret' object @id (the image key), in *@data
 * (*@len bytes, free with mekha_qemu_free).  -1 and *@err if there is no
 * such secret or it cannot be read.  BQL held.
 */
int mekha_qemu_secret_lookup(const char *id, uint8_t **data, size_t *len,
                             char **err);

/* ---- network frames toward the guests (all BQL held) ---- */

/*
 * A hold filter sits on the netdev (the backend peer) of every NIC, at the
 * tail of its filters.  It passes frames toward the guest through until it
 * holds; while it holds it queues every one, and the netdev keeps reading
 * (a tap's kernel queue drains into it, the VM stopped or not).  Released,
 * it passes its frames on in order, each once the NIC took the previous one,
 * and queues the netdev's newer frames behind them until it is empty: no
 * frame is purged, dropped or reordered on the way.
 */

/* The netdev of a NIC, as its frames need it; valid only during the call. */
typedef struct MekhaNetdev {
    const char *id;        /* the netdev's id, e.g. "net0" */
    uint32_t vnet_hdr_len; /* bytes of virtio-net header before each frame */
    uint8_t mac[6];        /* its NIC's MAC address, as configured */
    const char *error;     /* why no hold filter is on it, or NULL */
} MekhaNetdev;

/* Called once per NIC's netdev; return non-zero to stop the walk. */
typedef int (*MekhaNetdevFn)(const MekhaNetdev *netdev, void *opaque);

/*
 * Attach a hold filter to the netdev of every NIC that has none, as
 * object-add of a filter would (QOM id "mekha-hold-<netdev>"), then call
 * @fn for each NIC's netdev, with the error when it cannot be held
 * (vhost, multiqueue).  Filters stay attached.  Returns the first
 * non-zero value @fn returned, or 0.
 */
int mekha_qemu_net_hold_attach(MekhaNetdevFn fn, void *opaque);

/*
 * Hold: queue every frame toward a guest from now on, up to @max_bytes
 * per netdev (0: no bound; frames beyond are dropped and counted), and
 * the frames the NICs had queued already, ahead of them.
 */
void mekha_qemu_net_hold_begin(uint64_t max_bytes);

/* A frame the netdev sent with QEMU_NET_PACKET_FLAG_RAW. */
#define MEKHA_NET_FRAME_RAW (1u << 0)

/*
 * Called once per queued frame, netdev by netdev, oldest first; @data is
 * valid only during the call.  Return non-zero to stop the walk.
 */
typedef int (*MekhaNetFrameFn)(const MekhaNetdev *netdev, uint32_t flags,
                               const uint8_t *data, size_t len, void *opaque);

/* Walk the frames the hold filters queue; returns what @fn stopped with. */
int mekha_qemu_net_hold_foreach(MekhaNetFrameFn fn, void *opaque);

/*
 * Queue a frame toward the guest in the holding filter of netdev @netdev
 * (MEKHA_NET_FRAME_* @flags): behind the frames injected since the hold
 * began, ahead of those the netdev sent.  -1 when that netdev has no hold
 * filter or it does not hold.
 */
int mekha_qemu_net_hold_inject(const char *netdev, uint32_t flags,
                               const uint8_t *data, size_t len);

/*
 * Stop holding: every hold filter passes its frames on as the guests take
 * them, from the main loop (the caller may keep guest RAM write-protected
 * until it lets go of the BQL).  Returns the frames dropped over
 * @max_bytes since the hold began.
 */
uint64_t mekha_qemu_net_hold_release(void);

/*
 * Send @frame (an Ethernet frame of @len bytes, without virtio-net
 * header) from the NIC of netdev @netdev out through that netdev, now,
 * even while the VM is stopped: ahead of every frame the guest sends
 * later.  The netdev's virtio-net header is prefixed, zeroed.  -1 when
 * @netdev is no NIC's netdev or its link is down.
 */
int mekha_qemu_net_send(const char *netdev, const uint8_t *frame,
                        size_t len);

/* ---- clocks ---- */

/* QEMU's clocks, read together. */
typedef struct MekhaClocks {
    int64_t host_ns;        /* QEMU_CLOCK_HOST: wall clock of the devices (RTC) */
    int64_t host_offset_ns; /* QEMU_CLOCK_HOST minus the host's wall clock */
    int64_t virtual_ns;     /* QEMU_CLOCK_VIRTUAL: runs only while the VM runs */
    int64_t ticks;          /* cpu_get_ticks(): the TCG TSC's base */
    bool icount;            /* instruction counting drives the VM clock */
} MekhaClocks;

void mekha_qemu_clocks(MekhaClocks *clocks);

/* Make QEMU_CLOCK_HOST read the host's wall clock plus @offset_ns. */
void mekha_qemu_set_host_clock_offset(int64_t offset_ns);

/*
 * Move the VM clock forward by @ns and the tick counter by @ticks (TCG
 * without icount only).  BQL held.
 */
void mekha_qemu_advance_vm_clock(int64_t ns, int64_t ticks);

/* Start calling mekha_vm_run_state() on run-state changes.  BQL held. */
void mekha_qemu_watch_run_state(void);

#ifdef __cplusplus
}
#endif

#endif /* MEKHA_H */
