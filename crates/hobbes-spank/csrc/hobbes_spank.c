/*
 * The SPANK side of the Hobbes plugin: the --enclave option and the hooks'
 * bodies. Each hook reads what it needs from Slurm (spank_get_item,
 * spank_getenv) into a plain struct and hands it to the Rust side
 * (src/plugin.rs through src/ffi.rs), which talks to leviathan.
 *
 * The symbols Slurm looks up (plugin_name, plugin_type, plugin_version,
 * slurm_spank_*) are defined in src/ffi.rs and call the hobbes_shim_*
 * functions here: a Rust cdylib exports its own symbols only. For the same
 * reason the option is registered with spank_option_register in
 * slurm_spank_init rather than through a spank_options table.
 * The Rust side answers 0 (done), 1 (done, with a note for the log) or -1
 * (failed: the message is logged with slurm_error and the hook fails, so
 * srun reports it).
 *
 * Slurm's functions are referenced weakly: slurmstepd and srun define them
 * when they load the plugin; nothing else links this file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/spank.h>

#pragma weak spank_get_item
#pragma weak spank_getenv
#pragma weak spank_remote
#pragma weak slurm_error
#pragma weak slurm_info
#pragma weak slurm_verbose
#pragma weak spank_option_register

#define MSG_LEN 2048
#define NODE_LEN 256
/* HOBBES_ENCLAVE_GROUPS: at most 256 applications of ~40 bytes each. */
#define GROUPS_LEN 16384
/* Most tasks of one step on one node whose global ids we pass on. */
#define MAX_LOCAL_TASKS 4096

/* Must match `ffi::Step` in src/ffi.rs. */
struct hobbes_step {
	uint32_t job_id;
	uint32_t step_id;
	uint32_t has_het;
	uint32_t het_component;
	uint32_t local_tasks;
	uint64_t mem_mib;
	const char *node;
	/* The job's user, to own the enclaves. */
	uint32_t uid;
	uint32_t gid;
	/* HOBBES_ENCLAVE_GROUPS from the job's environment: 0 unset, 1 set
	 * (groups), 2 too long for our buffer. */
	uint32_t has_groups;
	const char *groups;
	/* The global task ids of this node's tasks (local id order); 0 of them
	 * when Slurm would not say. */
	uint32_t n_global_ids;
	const uint32_t *global_ids;
	/* S_STEP_ALLOC_CORES ("0-3"), NULL when Slurm would not say. */
	const char *alloc_cores;
};

/* Must match `ffi::Task` in src/ffi.rs. */
struct hobbes_task {
	uint32_t job_id;
	uint32_t step_id;
	uint32_t has_het;
	uint32_t het_component;
	uint32_t task_id;
	uint32_t local_id;
	int argc;
	char **argv;
	const char *node;
};

extern int hobbes_rs_init(int remote, int ac, char **av, char *msg, size_t len);
extern int hobbes_rs_option(const char *optarg, int remote, char *msg, size_t len);
extern int hobbes_rs_step_begin(const struct hobbes_step *step, char *msg, size_t len);
extern int hobbes_rs_task_join(const struct hobbes_task *task, char *msg, size_t len);
extern int hobbes_rs_task_check(char *msg, size_t len);
extern int hobbes_rs_task_place(uint32_t pid, uint32_t task_id, char *msg, size_t len);
extern int hobbes_rs_task_exit(uint32_t pid, int status, char *msg, size_t len);
extern int hobbes_rs_step_end(char *msg, size_t len);
extern int hobbes_rs_job_epilog(uint32_t job_id, const char *node, char *msg, size_t len);

/* Log the Rust side's answer; the hook's return value. */
static int report(int rc, const char *msg)
{
	if (rc < 0) {
		slurm_error("hobbes: %s", msg);
		return -1;
	}
	if (rc > 0 && msg[0])
		slurm_verbose("hobbes: %s", msg);
	return 0;
}

static int opt_enclave(int val, const char *optarg, int remote)
{
	char msg[MSG_LEN] = "";
	(void) val;
	return report(hobbes_rs_option(optarg, remote, msg, sizeof msg), msg);
}

static struct spank_option enclave_option = {
	"enclave", "[SPEC]",
	"Run the step's tasks on each node in a Hobbes enclave. "
	"SPEC: [native][,cores=N][,mem=SIZE][,shared|exclusive][,host-ipc]; "
	"defaults: the node's task count in cores, the step's memory per node.",
	2, 0, opt_enclave
};

/* The Slurm node this runs for: SLURMD_NODENAME from the job's environment
 * or our own, else the host name. */
static void node_name(spank_t sp, char *buf, size_t len)
{
	const char *env;

	buf[0] = '\0';
	if (sp && spank_getenv(sp, "SLURMD_NODENAME", buf, (int) len) == ESPANK_SUCCESS && buf[0])
		return;
	env = getenv("SLURMD_NODENAME");
	if (env && env[0]) {
		snprintf(buf, len, "%s", env);
		return;
	}
	if (gethostname(buf, len) != 0)
		snprintf(buf, len, "unknown");
	buf[len - 1] = '\0';
}

/* The component of a heterogeneous step, if this is one. */
static void het_component(spank_t sp, uint32_t *has, uint32_t *comp)
{
	char buf[32] = "";

	*has = 0;
	*comp = 0;
	if (spank_getenv(sp, "SLURM_HET_JOB_COMPONENT", buf, sizeof buf) != ESPANK_SUCCESS &&
	    spank_getenv(sp, "SLURM_PACK_JOB_COMPONENT", buf, sizeof buf) != ESPANK_SUCCESS)
		return;
	if (buf[0] >= '0' && buf[0] <= '9') {
		*has = 1;
		*comp = (uint32_t) strtoul(buf, NULL, 10);
	}
}

int hobbes_shim_init(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	spank_err_t rc;

	if (report(hobbes_rs_init(spank_remote(sp), ac, av, msg, sizeof msg), msg) < 0)
		return -1;
	rc = spank_option_register(sp, &enclave_option);
	/* Contexts without options (slurmd's, the epilog's) may refuse. */
	if (rc != ESPANK_SUCCESS)
		slurm_verbose("hobbes: --enclave not registered here (error %d)", (int) rc);
	return 0;
}

int hobbes_shim_init_post_opt(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	char node[NODE_LEN];
	static char groups[GROUPS_LEN];
	static uint32_t global_ids[MAX_LOCAL_TASKS];
	struct hobbes_step s;
	uint64_t mem = 0;
	uid_t uid = 0;
	gid_t gid = 0;
	spank_err_t grc;
	char *cores = NULL;
	uint32_t i;

	if (!spank_remote(sp))
		return 0;
	memset(&s, 0, sizeof s);
	if (spank_get_item(sp, S_JOB_ID, &s.job_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &s.step_id) != ESPANK_SUCCESS) {
		slurm_error("hobbes: cannot read the job and step ids");
		return -1;
	}
	if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &s.local_tasks) != ESPANK_SUCCESS)
		s.local_tasks = 0;
	if (spank_get_item(sp, S_STEP_ALLOC_MEM, &mem) != ESPANK_SUCCESS || mem == 0)
		if (spank_get_item(sp, S_JOB_ALLOC_MEM, &mem) != ESPANK_SUCCESS)
			mem = 0;
	s.mem_mib = mem;
	if (spank_get_item(sp, S_JOB_UID, &uid) == ESPANK_SUCCESS &&
	    spank_get_item(sp, S_JOB_GID, &gid) == ESPANK_SUCCESS) {
		s.uid = (uint32_t) uid;
		s.gid = (uint32_t) gid;
	}
	groups[0] = '\0';
	grc = spank_getenv(sp, "HOBBES_ENCLAVE_GROUPS", groups, sizeof groups);
	if (grc == ESPANK_SUCCESS)
		s.has_groups = 1;
	else if (grc == ESPANK_NOSPACE)
		s.has_groups = 2;
	s.groups = groups;
	for (i = 0; i < s.local_tasks && i < MAX_LOCAL_TASKS; i++)
		if (spank_get_item(sp, S_JOB_LOCAL_TO_GLOBAL_ID, i, &global_ids[i]) != ESPANK_SUCCESS)
			break;
	s.n_global_ids = (i == s.local_tasks) ? i : 0;
	s.global_ids = global_ids;
	if (spank_get_item(sp, S_STEP_ALLOC_CORES, &cores) == ESPANK_SUCCESS)
		s.alloc_cores = cores;
	het_component(sp, &s.has_het, &s.het_component);
	node_name(sp, node, sizeof node);
	s.node = node;
	/* A failure is logged here and reported by each task on its stderr
	 * (hobbes_shim_task_init): failing this hook would only make srun say
	 * "Plugin initialization failed", and exit 0. */
	report(hobbes_rs_step_begin(&s, msg, sizeof msg), msg);
	return 0;
}

int hobbes_shim_task_init_privileged(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	char node[NODE_LEN];
	struct hobbes_task t;
	int local = 0;

	if (!spank_remote(sp))
		return 0;
	memset(&t, 0, sizeof t);
	if (spank_get_item(sp, S_JOB_ID, &t.job_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &t.step_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_GLOBAL_ID, &t.task_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_ID, &local) != ESPANK_SUCCESS) {
		slurm_error("hobbes: cannot read the task's ids");
		return -1;
	}
	t.local_id = (uint32_t) local;
	if (spank_get_item(sp, S_JOB_ARGV, &t.argc, &t.argv) != ESPANK_SUCCESS) {
		t.argc = 0;
		t.argv = NULL;
	}
	het_component(sp, &t.has_het, &t.het_component);
	node_name(sp, node, sizeof node);
	t.node = node;
	/* Returns in the task (now in the enclave's PID namespace) only; its
	 * parent stays behind as the relay and never returns (src/relay.rs).
	 * A failure is logged here and fails the task in hobbes_shim_task_init,
	 * where its stderr is the one srun shows. */
	report(hobbes_rs_task_join(&t, msg, sizeof msg), msg);
	return 0;
}

int hobbes_shim_task_init(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";

	if (!spank_remote(sp))
		return 0;
	if (hobbes_rs_task_check(msg, sizeof msg) < 0) {
		/* The task's own stderr by now: srun prints it. */
		fprintf(stderr, "hobbes: %s\n", msg);
		fflush(stderr);
		return -1;
	}
	return 0;
}

int hobbes_shim_task_post_fork(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	pid_t pid = 0;
	uint32_t task_id = 0;

	if (!spank_remote(sp))
		return 0;
	if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_GLOBAL_ID, &task_id) != ESPANK_SUCCESS) {
		slurm_error("hobbes: cannot read the task's pid and id");
		return -1;
	}
	/* A task that cannot be placed must not run outside its enclave:
	 * failing here fails the step (slurmstepd kills its tasks). */
	return report(hobbes_rs_task_place((uint32_t) pid, task_id, msg, sizeof msg), msg);
}

int hobbes_shim_task_exit(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	pid_t pid = 0;
	int status = 0;

	if (!spank_remote(sp))
		return 0;
	if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_EXIT_STATUS, &status) != ESPANK_SUCCESS)
		return 0;
	/* A failed report is a note: the daemon saw the task end anyway. */
	if (hobbes_rs_task_exit((uint32_t) pid, status, msg, sizeof msg) != 0 && msg[0])
		slurm_verbose("hobbes: %s", msg);
	return 0;
}

int hobbes_shim_exit(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";

	if (!spank_remote(sp))
		return 0;
	return report(hobbes_rs_step_end(msg, sizeof msg), msg);
}

int hobbes_shim_job_epilog(spank_t sp, int ac, char **av)
{
	char msg[MSG_LEN] = "";
	char node[NODE_LEN];
	uint32_t job_id = 0;

	if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS)
		return 0;
	node_name(NULL, node, sizeof node);
	/* Never fail an epilog: Slurm would drain the node. */
	if (hobbes_rs_job_epilog(job_id, node, msg, sizeof msg) != 0 && msg[0])
		slurm_error("hobbes: %s", msg);
	return 0;
}
