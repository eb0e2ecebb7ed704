/*
 * hobbes.h - C interface of the Hobbes client library (libhobbes).
 *
 * Link with -lhobbes (pkg-config --cflags --libs hobbes).
 *
 * Queries (enclave and app lists, states, names) read the Node Information
 * Service (NIS, an LMDB database kept by the leviathan daemon) directly,
 * without talking to the daemon. Control calls (launch, kill, wait) go to
 * the daemon's socket; hobbes_ping_enclave goes straight to the enclave's
 * control process.
 *
 * Where things are found (environment variables):
 *   HOBBES_NIS        NIS directory to read (set inside enclaves: their replica)
 *   HOBBES_SOCKET     the daemon's socket
 *   HOBBES_STATE_DIR  state directory holding nis/ and leviathan.sock
 *                     (default /run/hobbes for root, else
 *                     $XDG_RUNTIME_DIR/hobbes or /tmp/hobbes-<uid>)
 *   HOBBES_ENCLAVE_ID, HOBBES_APP_ID  set by Hobbes in the processes it launches
 *
 * Errors: calls return -1, HOBBES_INVALID_ID, an *_INVALID enum value or NULL,
 * set errno and keep a message for hobbes_last_error():
 *   ENOENT        unknown enclave or app id / name
 *   EACCES        permission denied (by the daemon, or on its socket / NIS)
 *   ENOSPC        not enough free cores or memory
 *   EINVAL        bad argument (NULL pointer, malformed envp entry, ...)
 *   ECONNREFUSED  no daemon: no socket, nobody listening, or no NIS
 *   EBUSY         the object is in the wrong state (e.g. enclave crashed)
 *   ETIMEDOUT     an enclave's control process did not answer
 *   EPROTO        the peer does not speak this protocol version
 *   ENOEXEC       hobbes_launch_app: the app could not be started
 * Successful calls leave errno and hobbes_last_error() alone.
 *
 * All calls are thread-safe. Memory returned as "malloc'd" is released by
 * the caller with free().
 */

#ifndef HOBBES_H
#define HOBBES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Enclave and app ids are node-global and never reused. */
typedef uint64_t hobbes_id_t;

#define HOBBES_INVALID_ID        ((hobbes_id_t)-1)
/* The host enclave, where leviathan runs. */
#define HOBBES_MASTER_ENCLAVE_ID ((hobbes_id_t)0)

#define HOBBES_ENV_ENCLAVE_ID "HOBBES_ENCLAVE_ID"
#define HOBBES_ENV_APP_ID     "HOBBES_APP_ID"

/* Size of the name arrays below, terminating NUL included. Enclave names
 * (at most 64 bytes) always fit; longer app names are truncated. */
#define HOBBES_NAME_MAX 128

/* ---- library ---------------------------------------------------------- */

/* Open the NIS and check that a daemon published the node in it.
 * 0, or -1 with errno ECONNREFUSED (no NIS: leviathan never ran with this
 * state directory, or is still starting). Queries work without calling it
 * (they open the NIS on first use); calling it reports a missing daemon early. */
int hobbes_client_init(void);
/* Forget what hobbes_client_init opened. Always 0. */
int hobbes_client_deinit(void);
/* True when hobbes_client_init would succeed. */
bool hobbes_is_available(void);

/* Message of this thread's last failed call, "" if none. Valid until the
 * next failing call on the same thread. Never NULL. */
const char *hobbes_last_error(void);

/* HOBBES_ENCLAVE_ID, or 0 (the host) outside any enclave. */
hobbes_id_t hobbes_get_my_enclave_id(void);
/* HOBBES_APP_ID, or HOBBES_INVALID_ID for a process Hobbes did not launch
 * (errno untouched). */
hobbes_id_t hobbes_get_my_app_id(void);
/* Name of the enclave this process runs in: malloc'd, or NULL. */
char *hobbes_get_my_enclave_name(void);

/* ---- enclaves --------------------------------------------------------- */

/* Values match leviathan's enclave states. */
typedef enum {
    ENCLAVE_INVALID  = -1, /* error return */
    ENCLAVE_STARTING = 0,  /* resources reserved, control process starting */
    ENCLAVE_RUNNING  = 1,
    ENCLAVE_CRASHED  = 2,  /* heartbeats stopped or control process died */
    ENCLAVE_STOPPING = 3   /* being torn down */
} enclave_state_t;

typedef enum {
    INVALID_ENCLAVE = -1, /* error return */
    HOST_ENCLAVE    = 0,  /* the Linux host itself (enclave 0) */
    NATIVE_ENCLAVE  = 1,  /* a partition of cores and memory with its own namespaces */
    LWK_ENCLAVE     = 2,  /* a lightweight kernel on KVM on cores of its own (Kitten's analog) */
    VM_ENCLAVE      = 3   /* a Linux virtual machine under QEMU (Palacios' analog) */
} enclave_type_t;

struct enclave_info {
    hobbes_id_t     id;
    hobbes_id_t     parent;
    char            name[HOBBES_NAME_MAX];
    enclave_type_t  type;
    enclave_state_t state;
    uint32_t        num_cores;
    uint64_t        mem_bytes; /* memory limit */
};

/* All enclaves in id order: a malloc'd array of *num_enclaves entries
 * (never NULL on success, even when empty), or NULL. */
struct enclave_info *hobbes_get_enclave_list(int *num_enclaves);

enclave_state_t hobbes_get_enclave_state(hobbes_id_t enclave_id);
enclave_type_t  hobbes_get_enclave_type(hobbes_id_t enclave_id);
hobbes_id_t     hobbes_get_enclave_parent(hobbes_id_t enclave_id);
/* malloc'd copy of the name, or NULL. */
char *          hobbes_get_enclave_name(hobbes_id_t enclave_id);
/* HOBBES_INVALID_ID (ENOENT) when no enclave has that name. */
hobbes_id_t     hobbes_get_enclave_id(const char *enclave_name);

/* One round trip to the enclave's control process (the host is pinged
 * through leviathan). Stores the round-trip time in *rtt_ns unless NULL.
 * 0, or -1. */
int hobbes_ping_enclave(hobbes_id_t enclave_id, uint64_t *rtt_ns);

/* Static strings: "starting", "host", ... ("invalid" for unknown values). */
const char *enclave_state_to_str(enclave_state_t state);
const char *enclave_type_to_str(enclave_type_t type);

/* ---- applications ----------------------------------------------------- */

/* Values match leviathan's app states. */
typedef enum {
    APP_INVALID  = -1, /* error return */
    APP_STARTING = 0,
    APP_RUNNING  = 1,
    APP_EXITED   = 2,  /* exited by itself, any exit code */
    APP_CRASHED  = 3,  /* killed by a signal (crash, kill, OOM) */
    APP_LOST     = 4,  /* its enclave went away; fate unknown */
    APP_FAILED   = 5   /* could not be started */
} app_state_t;

struct app_info {
    hobbes_id_t id;
    hobbes_id_t enclave_id;
    char        name[HOBBES_NAME_MAX];
    app_state_t state;
    int         exit_code; /* code, or 128 + signal; -1 while it has none */
};

/* All apps the NIS records, in id order: malloc'd array of *num_apps
 * entries (never NULL on success), or NULL. */
struct app_info *hobbes_get_app_list(int *num_apps);

app_state_t hobbes_get_app_state(hobbes_id_t app_id);
/* malloc'd copy of the name, or NULL. */
char *      hobbes_get_app_name(hobbes_id_t app_id);
hobbes_id_t hobbes_get_app_enclave(hobbes_id_t app_id);

/* Launch exe in an enclave; returns the app's id once it runs, or
 * HOBBES_INVALID_ID. As with execve(2), argv is NULL-terminated and argv[0]
 * names the program: its file name becomes the app's name, argv[1..] are the
 * arguments, and exe is what runs. envp is NULL-terminated "KEY=VALUE"
 * entries added to the enclave's environment. argv and envp may be NULL. */
hobbes_id_t hobbes_launch_app(hobbes_id_t enclave_id, const char *exe,
                              char *const argv[], char *const envp[]);

/* Send a signal to the app's processes. 0, or -1. */
int hobbes_kill_app(hobbes_id_t app_id, int signal);

/* Block until the app ends. 0, and *exit_code (unless NULL) gets its exit
 * code or 128 + signal, or -1 if it ended without one (lost, failed). */
int hobbes_wait_app(hobbes_id_t app_id, int *exit_code);

const char *app_state_to_str(app_state_t state);

#ifdef __cplusplus
}
#endif

#endif /* HOBBES_H */
