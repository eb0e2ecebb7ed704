/*
 * Exercises libhobbes through hobbes.h. Prints one "key=value" line per
 * check; tests/c_abi.rs runs it and asserts on the output.
 *
 *   hobbes_test nodaemon   no daemon, no NIS
 *   hobbes_test nis        a NIS written by the test (no daemon)
 *   hobbes_test live ID    a running leviathan with enclave ID
 *   hobbes_test layout     struct sizes and offsets
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hobbes.h>

static void print_id(const char *key, hobbes_id_t id)
{
    if (id == HOBBES_INVALID_ID)
        printf("%s=invalid errno=%d\n", key, errno);
    else
        printf("%s=%" PRIu64 "\n", key, id);
}

static void print_rc(const char *key, int rc)
{
    if (rc < 0)
        printf("%s=%d errno=%d error=%s\n", key, rc, errno, hobbes_last_error());
    else
        printf("%s=%d\n", key, rc);
}

static void print_str(const char *key, char *s)
{
    if (s == NULL) {
        printf("%s=NULL errno=%d\n", key, errno);
    } else {
        printf("%s=%s\n", key, s);
        free(s);
    }
}

static void list_enclaves(void)
{
    int n = -1;
    struct enclave_info *list = hobbes_get_enclave_list(&n);
    if (list == NULL) {
        printf("enclaves=NULL errno=%d error=%s\n", errno, hobbes_last_error());
        return;
    }
    printf("enclaves=%d\n", n);
    for (int i = 0; i < n; i++)
        printf("enclave id=%" PRIu64 " name=%s type=%s state=%s parent=%" PRIu64
               " cores=%u mem=%" PRIu64 "\n",
               list[i].id, list[i].name, enclave_type_to_str(list[i].type),
               enclave_state_to_str(list[i].state), list[i].parent, list[i].num_cores,
               list[i].mem_bytes);
    free(list);
}

static void list_apps(void)
{
    int n = -1;
    struct app_info *list = hobbes_get_app_list(&n);
    if (list == NULL) {
        printf("apps=NULL errno=%d error=%s\n", errno, hobbes_last_error());
        return;
    }
    printf("apps=%d\n", n);
    for (int i = 0; i < n; i++)
        printf("app id=%" PRIu64 " name=%s enclave=%" PRIu64 " state=%s exit=%d\n",
               list[i].id, list[i].name, list[i].enclave_id, app_state_to_str(list[i].state),
               list[i].exit_code);
    free(list);
}

static int no_daemon(void)
{
    print_rc("init", hobbes_client_init());
    printf("available=%d\n", hobbes_is_available());
    print_id("my_enclave", hobbes_get_my_enclave_id());
    errno = 0;
    print_id("my_app", hobbes_get_my_app_id());
    print_rc("kill", hobbes_kill_app(1, SIGTERM));
    list_enclaves();
    /* Bad arguments are refused, not dereferenced. */
    struct enclave_info *none = hobbes_get_enclave_list(NULL);
    printf("list_null=%s errno=%d\n", none ? "ptr" : "NULL", errno);
    print_id("id_of_null", hobbes_get_enclave_id(NULL));
    print_id("launch_null", hobbes_launch_app(0, NULL, NULL, NULL));
    print_rc("deinit", hobbes_client_deinit());
    return 0;
}

static int with_nis(void)
{
    print_rc("init", hobbes_client_init());
    printf("available=%d\n", hobbes_is_available());
    list_enclaves();
    list_apps();

    hobbes_id_t sim = hobbes_get_enclave_id("sim");
    print_id("id_of_sim", sim);
    print_str("name_of_sim", hobbes_get_enclave_name(sim));
    printf("state_of_sim=%s\n", enclave_state_to_str(hobbes_get_enclave_state(sim)));
    printf("type_of_sim=%s\n", enclave_type_to_str(hobbes_get_enclave_type(sim)));
    print_id("parent_of_sim", hobbes_get_enclave_parent(sim));
    print_str("my_enclave_name", hobbes_get_my_enclave_name());

    print_str("app_name", hobbes_get_app_name(5));
    printf("app_state=%s\n", app_state_to_str(hobbes_get_app_state(5)));
    print_id("app_enclave", hobbes_get_app_enclave(5));

    /* Unknown ids and names. */
    errno = 0;
    enclave_state_t unknown = hobbes_get_enclave_state(99);
    printf("state_of_unknown=%d errno=%d\n", (int)unknown, errno);
    print_id("id_of_unknown", hobbes_get_enclave_id("nope"));
    print_str("name_of_unknown", hobbes_get_enclave_name(99));
    app_state_t unknown_app = hobbes_get_app_state(99);
    printf("app_state_unknown=%d errno=%d\n", (int)unknown_app, errno);

    /* The enclave's control socket does not exist: no control process. */
    uint64_t rtt = 0;
    print_rc("ping_sim", hobbes_ping_enclave(sim, &rtt));
    return 0;
}

static int live(hobbes_id_t enclave)
{
    print_rc("init", hobbes_client_init());
    list_enclaves();
    print_str("enclave_name", hobbes_get_enclave_name(enclave));

    char *const sh_argv[] = {"sh", "-c", "exit 3", NULL};
    hobbes_id_t app = hobbes_launch_app(enclave, "/bin/sh", sh_argv, NULL);
    if (app == HOBBES_INVALID_ID)
        printf("launch_error=%s\n", hobbes_last_error());
    print_id("launch_sh", app);
    int code = -100;
    print_rc("wait_sh", hobbes_wait_app(app, &code));
    printf("exit_sh=%d\n", code);
    print_str("name_sh", hobbes_get_app_name(app));

    char *const sleep_argv[] = {"sleep", "100", NULL};
    char *const envp[] = {"HOBBES_C_TEST=1", NULL};
    app = hobbes_launch_app(enclave, "/bin/sleep", sleep_argv, envp);
    print_id("launch_sleep", app);
    print_rc("kill_sleep", hobbes_kill_app(app, SIGKILL));
    code = -100;
    print_rc("wait_sleep", hobbes_wait_app(app, &code));
    printf("exit_sleep=%d\n", code);

    uint64_t rtt = 0;
    print_rc("ping", hobbes_ping_enclave(enclave, &rtt));
    printf("rtt_positive=%d\n", rtt > 0);
    list_apps();
    return 0;
}

static int layout(void)
{
    printf("enclave_info size=%zu id=%zu parent=%zu name=%zu type=%zu state=%zu "
           "num_cores=%zu mem_bytes=%zu\n",
           sizeof(struct enclave_info), offsetof(struct enclave_info, id),
           offsetof(struct enclave_info, parent), offsetof(struct enclave_info, name),
           offsetof(struct enclave_info, type), offsetof(struct enclave_info, state),
           offsetof(struct enclave_info, num_cores), offsetof(struct enclave_info, mem_bytes));
    printf("app_info size=%zu id=%zu enclave_id=%zu name=%zu state=%zu exit_code=%zu\n",
           sizeof(struct app_info), offsetof(struct app_info, id),
           offsetof(struct app_info, enclave_id), offsetof(struct app_info, name),
           offsetof(struct app_info, state), offsetof(struct app_info, exit_code));
    printf("enum size=%zu invalid_id=%d\n", sizeof(enclave_state_t),
           HOBBES_INVALID_ID == UINT64_MAX);
    return 0;
}

int main(int argc, char **argv)
{
    /* Line-buffer so the output survives a crash mid-run. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "nodaemon") == 0)
        return no_daemon();
    if (strcmp(mode, "nis") == 0)
        return with_nis();
    if (strcmp(mode, "live") == 0 && argc > 2)
        return live(strtoull(argv[2], NULL, 10));
    if (strcmp(mode, "layout") == 0)
        return layout();
    fprintf(stderr, "usage: %s nodaemon|nis|live ENCLAVE_ID|layout\n", argv[0]);
    return 2;
}
