"""``tunefleet slurm``: write (and optionally submit) the sbatch script of a study.

Storage mode: the batch step runs ``tunefleet init``, then ``srun`` starts one
``tunefleet worker`` per task, all on the same storage. Hub mode: the batch step runs
``tunefleet serve`` (the coordinator, the only process that touches the storage) and ``srun``
starts workers that connect to it over TCP, for clusters whose shared-file-system database is slow.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys

import click

from tunefleet.cli._options import (artifact_store, checkpoint_options, search_space_file,
                                    spec_from_options, study_options)
from tunefleet._gpus import check_packing, pack
from tunefleet.errors import UsageError
from tunefleet._studies import shown_url

_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.I)


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _make_log_folder(pattern: str | None) -> None:
    """Slurm opens log files in existing folders only (a missing one loses every log line and
    fails the job): make the folder of a log pattern now, unless it holds a % placeholder."""
    folder = os.path.dirname(pattern or "")
    if folder and "%" not in folder:
        os.makedirs(folder, exist_ok=True)


def _spec_args(directions: tuple[str, ...], sampler: str | None, seed: int | None,
               pruner: str | None, search_space: str | None = None) -> list[str]:
    out: list[str] = []
    for d in directions:
        out += ["--direction", d.lower()]
    if sampler:
        out += ["--sampler", sampler.lower()]
    if seed is not None:
        out += ["--seed", str(seed)]
    if pruner:
        out += ["--pruner", pruner.lower()]
    if search_space:
        out += ["--search-space", os.path.abspath(search_space)]
    return out


def _batch_log(pattern: str) -> str:
    """The batch step's log name for a per-task PATTERN: the batch step is no task, so its
    ``%t`` reads ``batch`` (``tunefleet-%j-%t.out`` -> ``tunefleet-%j-batch.out``)."""
    return re.sub(r"(?<!%)%t", "batch", pattern)


def _sbatch_line(value: str) -> str:
    """One ``--sbatch`` value as the option of a ``#SBATCH`` line, checked to be one."""
    text = value.strip()
    if text.upper().startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("-") or "\n" in text or "\r" in text:
        raise UsageError(f"--sbatch {value!r}: give one sbatch option, e.g. "
                         "--sbatch '--mail-type=END' or --sbatch '--exclusive'")
    return text


def _gpu_lines(nodes: int, tasks_per_node: int, gpus_per_task: int | None,
               trials_per_gpu: int | None) -> tuple[list[str], str]:
    """The #SBATCH lines of the tasks (and their GPUs), and the prefix of the workers' command
    that gives a task its GPUs where the site binds none: the task's slot (``SLURM_LOCALID``)
    of the node's layout (``tunefleet._gpus.pack``), as ``tunefleet run`` hands them out.
    Slurm binds them itself for ``--gpus-per-task`` and ``--ntasks-per-gpu``."""
    per_trial = gpus_per_task or None
    check_packing(trials_per_gpu, per_trial)
    if per_trial is None and trials_per_gpu is None:
        return [f"--ntasks-per-node={tasks_per_node}"], ""
    if trials_per_gpu is not None:
        if tasks_per_node % trials_per_gpu:
            raise UsageError(f"--tasks-per-node {tasks_per_node} is not a multiple of "
                             f"--trials-per-gpu {trials_per_gpu}: every GPU runs "
                             f"{trials_per_gpu} workers")
        gpus = tasks_per_node // trials_per_gpu
        # --ntasks-per-gpu excludes --ntasks-per-node: the tasks are counted for the job.
        lines = [f"--ntasks={nodes * tasks_per_node}", f"--gpus-per-node={gpus}",
                 f"--ntasks-per-gpu={trials_per_gpu}"]
    else:
        gpus = tasks_per_node * (per_trial or 1)
        lines = [f"--ntasks-per-node={tasks_per_node}", f"--gpus-per-task={per_trial}"]
    layout = " ".join(pack([str(i) for i in range(gpus)], trials_per_gpu, per_trial))
    return lines, ("bash -c 'L=(" + layout + "); export CUDA_VISIBLE_DEVICES="
                   "\"${CUDA_VISIBLE_DEVICES:-${L[$SLURM_LOCALID]}}\"; exec \"$@\"' "
                   "tunefleet-task ")


def render_script(*, target: str, nodes: int, tasks_per_node: int, gpus_per_task: int | None,
                  cpus_per_task: int | None, time_limit: str | None, partition: str | None,
                  container: str | None, storage: str, study: str, n_trials: int, mode: str,
                  spec_args: list[str], workdir: str, job_name: str, port: int | None,
                  key_file: str, python: str = sys.executable, account: str | None = None,
                  qos: str | None = None, mem: str | None = None, gres: str | None = None,
                  constraint: str | None = None, extra_sbatch: tuple[str, ...] = (),
                  output: str | None = None, error: str | None = None,
                  binds: tuple[str, ...] = (), trials_per_gpu: int | None = None,
                  signal: int | None = None, requeue: bool = False,
                  worker_args: tuple[str, ...] = (),
                  storage_timeout: float | None = None) -> str:
    """The sbatch script text; every value is shell-quoted.

    ``output``/``error`` are Slurm file patterns: the workers' ``srun`` writes one file per task
    when they hold ``%t``, the batch step (init, coordinator, best) writes its own (see
    ``_batch_log``). ``extra_sbatch`` lines come last, so that they can override ours.

    ``signal``: the workers get SIGTERM this many seconds before the time limit; they hand
    their trials back after the next ``checkpoint.save`` and exit 143. Slurm's own warning
    (``--signal=B:USR1@N``) goes to the batch shell, which sends SIGTERM to the job's steps
    (``scancel --signal=TERM``; SIGTERM to ``srun`` itself kills the step at once) at the job's
    end time minus N: Slurm may warn up to a minute early,
    and a warning sent to the steps before ``srun`` started was lost (CI, stop 23).
    ``requeue``: the script then requeues its own job, which continues the study's unfinished
    trials from their checkpoints; a plain SIGTERM (``scancel``) ends it without a requeue.
    ``worker_args``: more options of ``tunefleet worker`` (storage mode). ``storage_timeout``:
    how long the workers (storage mode) or the coordinator (hub mode) wait out the database."""
    waits = f" --storage-timeout {storage_timeout:g}" if storage_timeout is not None else ""
    gpu_lines, gpu = _gpu_lines(nodes, tasks_per_node, gpus_per_task, trials_per_gpu)
    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", *gpu_lines]
    if cpus_per_task:
        sbatch.append(f"--cpus-per-task={cpus_per_task}")
    if time_limit:
        sbatch.append(f"--time={time_limit}")
    for name, value in (("partition", partition), ("account", account), ("qos", qos),
                        ("mem", mem), ("gres", gres), ("constraint", constraint)):
        if value:
            sbatch.append(f"--{name}={value}")
    if signal is not None:
        sbatch.append(f"--signal=B:USR1@{signal}")
    if requeue:  # every run of the job logs into the same file
        sbatch += ["--requeue", "--open-mode=append"]
    sbatch += [f"--chdir={workdir}", f"--output={_batch_log(output or '%x-%j.out')}"]
    if error:
        sbatch.append(f"--error={_batch_log(error)}")
    sbatch += [_sbatch_line(line) for line in extra_sbatch]
    if container:
        bind_args: list[str] = []
        for bind in (workdir, *binds):
            bind_args += ["--bind", bind]
        launcher = ["apptainer", "exec"] + (["--nv"] if gpu else []) + \
                   [*bind_args, container, "python3", "-m", "tunefleet"]
    else:
        launcher = [python, "-m", "tunefleet"]
    lines = [
        "#!/bin/bash",
        f"# Written by `tunefleet slurm` ({mode} mode) on "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}.",
        *[f"#SBATCH {opt}" for opt in sbatch],
        "set -euo pipefail",
        "",
        f"TUNEFLEET=({' '.join(_q(a) for a in launcher)})",
        f"STORAGE={_q(storage)}",
        f"STUDY={_q(study)}",
        f"N_TRIALS={n_trials}",
        'echo "tunefleet: job ${SLURM_JOB_ID:-?}: ${SLURM_NTASKS:-?} workers on '
        f'${{SLURM_JOB_NODELIST:-?}}, study $STUDY in "{_q(shown_url(storage))}',
    ]
    if signal is not None and mode == "storage":
        at = lines.index("set -euo pipefail") + 1
        lines[at:at] = [
            f"# Slurm's warning (--signal=B:USR1@{signal}) may come up to a minute early: stop "
            f"the workers {signal} s",
            "# before the job's end time, whenever it comes (before srun started too).",
            'STOP_AT=""',
            "STOPPED=0",
            "warned() {",
            '    local end',
            '    end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) || end=""',
            '    end=$(date -d "$end" +%s 2>/dev/null) || end=$(date +%s)',
            f"    STOP_AT=$((end - {signal}))",
            "}",
            "trap warned USR1",
        ]
    spec = " ".join(_q(a) for a in spec_args)
    spec = f" {spec}" if spec else ""
    srun = 'srun --ntasks="$SLURM_NTASKS" --kill-on-bad-exit=0'
    if output:
        srun += f" --output={_q(output)}"
    if error:
        srun += f" --error={_q(error)}"
    if mode == "storage":
        lines += [
            "",
            "# Create the study once (harmless when it exists); the workers read its sampler.",
            f'"${{TUNEFLEET[@]}}" init --storage "$STORAGE" --study "$STUDY"{spec}',
            "# One worker per task; together they stop when the study holds N_TRIALS trials.",
            "# A worker stopped by SIGTERM hands its trial back and exits 143.",
            "set +e",
        ]
        workers = (f'{srun} {gpu}"${{TUNEFLEET[@]}}" worker {_q(target)} --storage "$STORAGE" '
                   '--study "$STUDY" --n-trials "$N_TRIALS"'
                   + "".join(f" {_q(a)}" for a in worker_args) + waits)
        if signal is None:
            lines += [workers, "STATUS=$?"]
        else:
            lines += [
                f"{workers} &",
                "SRUN=$!",
                f"# SIGTERM to every worker {signal} s before the end (to the job's steps, not",
                "# this shell; SIGTERM to srun itself would kill the step at once).",
                "while kill -0 \"$SRUN\" 2>/dev/null; do",
                '    if [ -n "$STOP_AT" ] && [ "$(date +%s)" -ge "$STOP_AT" ]; then',
                '        scancel --signal=TERM "$SLURM_JOB_ID"; STOP_AT=""; STOPPED=1',
                "    fi",
                "    sleep 1",
                "done",
                'wait "$SRUN"',
                "STATUS=$?",
            ]
        lines.append("set -e")
        if requeue:
            lines += [
                "# Stopped before the time limit (--signal): run again, continuing the",
                "# unfinished trials from their checkpoints. After scancel the job ends.",
                'if [ "$STATUS" -eq 143 ] && [ "$STOPPED" -eq 1 ]; then',
                '    echo "tunefleet: job $SLURM_JOB_ID: workers stopped before the time limit; '
                'requeued"',
                '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
                "fi",
            ]
        lines.append('if [ "$STATUS" -ne 0 ]; then exit "$STATUS"; fi')
    else:
        lines += [
            f"KEY_FILE={_q(key_file)}",
            # Two hub jobs on one node must not share a port: derive it from the job id.
            f"PORT={port}" if port else 'PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))',
            "HUB_HOST=$(hostname)",
            "# The shared secret of the hub: made once, readable by you only.",
            'if [ ! -s "$KEY_FILE" ]; then (umask 077; head -c 32 /dev/urandom | od -An -tx1 '
            '| tr -d \' \\n\' > "$KEY_FILE"); fi',
            "",
            "# The coordinator runs in the batch step: the only process that opens the storage.",
            f'"${{TUNEFLEET[@]}}" serve {_q(target)} --listen "tcp://$HUB_HOST:$PORT" '
            f'--key-file "$KEY_FILE" --n-trials "$N_TRIALS" --storage "$STORAGE" '
            f'--study "$STUDY"{spec}{waits} --no-progress &',
            "HUB_PID=$!",
            "# One worker per task, connected to the coordinator over TCP.",
            f'{srun} {gpu}"${{TUNEFLEET[@]}}" worker --connect "tcp://$HUB_HOST:$PORT" '
            '--key-file "$KEY_FILE"',
            'wait "$HUB_PID"',
        ]
    if mode == "storage":  # in hub mode the coordinator has printed the best already
        lines.append('"${TUNEFLEET[@]}" best --storage "$STORAGE" --study "$STUDY"')
    return "\n".join(lines + [""])


def expand_log(pattern: str, job_name: str, job: str | None = None) -> tuple[str, list[str]]:
    """The batch step's log file for a Slurm filename PATTERN (``--output``), as Slurm
    expands it: the job id (%j %A; %J is id.batch), the job name (%x), the user (%u), the
    array index (%a: 4294967294 outside a job array), %% and zero padding (%4j). Without
    ``job`` (not submitted yet) the id stays JOB. Returns the name and the placeholders
    left (%N: the node, known when the job runs)."""
    import getpass

    left: list[str] = []
    ids = {"j": job or "JOB", "A": job or "JOB", "J": f"{job or 'JOB'}.batch", "x": job_name,
           "u": getpass.getuser(), "a": "4294967294", "s": "batch", "t": "batch", "n": "0",
           "%": "%"}

    def one(match: re.Match[str]) -> str:
        width, code = match.group(1), match.group(2)
        value = ids.get(code)
        if value is None:
            left.append(f"%{code}")
            return match.group(0)
        return value.zfill(int(width)) if width and value.isdigit() else value

    return re.sub(r"%(\d*)([A-Za-z%])", one, _batch_log(pattern)), left


def _worker_args(mode: str, signal_at: int | None, requeue: bool, grace: float | None,
                 checkpoint_dir: str | None, keep_checkpoints: bool,
                 checkpoint_store: str | None = None) -> tuple[str, ...]:
    """The checkpoint and preemption options of the storage-mode workers, checked."""
    given = [name for name, value in (("--signal", signal_at), ("--requeue", requeue),
                                      ("--grace", grace), ("--checkpoint-dir", checkpoint_dir),
                                      ("--checkpoint-store", checkpoint_store),
                                      ("--keep-checkpoints", keep_checkpoints))
             if value not in (None, False)]
    if mode != "storage" and given:
        raise UsageError(f"{' '.join(given)}: storage mode only (drop --mode {mode})")
    if requeue and signal_at is None:
        raise UsageError("--requeue needs --signal SECONDS: the workers must be stopped before "
                         "the time limit for the job to requeue itself")
    given_grace = f"--grace {grace:g}" if grace is not None else "the workers' --grace 20"
    if signal_at is not None and (20.0 if grace is None else grace) >= signal_at:
        raise UsageError(f"{given_grace} must be shorter than --signal {signal_at}: the trials "
                         "must be handed back before the time limit")
    args: list[str] = []
    if grace is not None:
        args += ["--grace", f"{grace:g}"]
    if checkpoint_dir is not None:
        args += ["--checkpoint-dir", os.path.abspath(checkpoint_dir)]
    if checkpoint_store is not None:
        artifact_store(checkpoint_store, checkpoint_dir)  # one line now, not in every task
        args += ["--checkpoint-store", checkpoint_store]
    if keep_checkpoints:
        args.append("--keep-checkpoints")
    return tuple(args)


@click.command()
@click.argument("target")
@study_options
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--tasks-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers per node (one per GPU, typically).")
@click.option("--gpus-per-trial", "--gpus-per-task", "gpus_per_task", type=click.IntRange(min=0),
              default=None, help="GPUs of each worker task (#SBATCH --gpus-per-task).")
@click.option("--trials-per-gpu", type=int, default=None,
              help="Worker tasks sharing each GPU (#SBATCH --ntasks-per-gpu): "
                   "--tasks-per-node 4 --trials-per-gpu 2 asks for 2 GPUs per node.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None)
@click.option("--time", "time_limit", default=None, help="Slurm time limit, e.g. 02:00:00.")
@click.option("--partition", default=None, help="Slurm partition (queue).")
@click.option("--account", default=None, help="Account the job is charged to.")
@click.option("--qos", default=None, help="Quality of service.")
@click.option("--mem", default=None, help="Memory per node, e.g. 16G.")
@click.option("--gres", default=None, help="Generic resources per node, e.g. gpu:a100:2.")
@click.option("--constraint", default=None, help="Node features, e.g. 'a100|h100'.")
@click.option("--sbatch", "extra_sbatch", multiple=True,
              help="Any other #SBATCH line, e.g. --sbatch '--mail-type=END'; repeatable.")
@click.option("--output", default=None,
              help="Log file pattern; with %t one file per worker task, e.g. "
                   "logs/%x-%j-%t.out (the batch step's %t reads 'batch'). "
                   "Default: %x-%j.out, one file for all.")
@click.option("--error", default=None,
              help="Pattern of the stderr logs, as --output (default: with stdout).")
@click.option("--container", default=None, help="Apptainer image to run tunefleet in.")
@click.option("--bind", "binds", multiple=True,
              help="More folders for the container (SRC[:DST], apptainer --bind); repeatable.")
@click.option("--n-trials", type=click.IntRange(min=1), required=True,
              help="Trials the study must hold, over all workers.")
@click.option("--mode", type=click.Choice(["storage", "hub"]), default="storage",
              show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Hub mode: the coordinator's TCP port (default 20000 + job id mod 20000).")
@click.option("--key-file", default=None, help="Hub mode: shared secret file "
                                                "(default .tunefleet-STUDY.key, made if absent).")
@click.option("--job-name", default=None, help="Default: tunefleet-STUDY.")
@click.option("--script", "script_path", default=None,
              help="Where to write the script (default tunefleet-STUDY.sbatch).")
@click.option("--submit", is_flag=True, help="Submit it with sbatch instead of printing it.")
@click.option("--signal", "signal_at", type=click.IntRange(1, 65535), default=None,
              help="Storage mode: SIGTERM to the workers this many seconds before the time limit "
                   "(Slurm warns the batch shell, #SBATCH --signal=B:USR1@N, which stops the "
                   "workers at the end time minus N): each hands its trial back after the "
                   "trial's next checkpoint.save.")
@click.option("--requeue", is_flag=True,
              help="Storage mode: when the workers were stopped by --signal, requeue the job "
                   "(#SBATCH --requeue); the next run continues the trials from their "
                   "checkpoints.")
@click.option("--grace", type=click.FloatRange(min=0), default=None,
              help="Storage mode: seconds a worker's trial gets after SIGTERM to reach its next "
                   "checkpoint.save (tunefleet worker --grace; default 20). Keep it under "
                   "--signal and Slurm's KillWait.")
@click.option("--storage-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds a database server may stay away (restart, failover) before the "
                   "workers (storage mode) or the coordinator (hub mode) stop; default 300.")
@checkpoint_options
def slurm(target: str, storage: str | None, study_name: str | None,
          directions: tuple[str, ...], sampler: str | None, seed: int | None,
          pruner: str | None, nodes: int, tasks_per_node: int, gpus_per_task: int | None,
          cpus_per_task: int | None, time_limit: str | None, partition: str | None,
          account: str | None, qos: str | None, mem: str | None, gres: str | None,
          constraint: str | None, extra_sbatch: tuple[str, ...], output: str | None,
          error: str | None, container: str | None, binds: tuple[str, ...], n_trials: int,
          mode: str, port: int | None, key_file: str | None,
          job_name: str | None, script_path: str | None, submit: bool,
          trials_per_gpu: int | None, signal_at: int | None = None, requeue: bool = False,
          grace: float | None = None, checkpoint_dir: str | None = None,
          keep_checkpoints: bool = False, storage_timeout: float | None = None,
          checkpoint_store: str | None = None) -> None:
    """Write the sbatch script that runs TARGET on NODES x TASKS-PER-NODE workers of one study;
    print it, or --submit it and say how to follow it."""
    from tunefleet._studies import DEFAULT_STORAGE, DEFAULT_STUDY

    if time_limit is not None and not _TIME.match(time_limit):
        raise UsageError(f"--time {time_limit!r}: use HH:MM:SS, MM:SS or D-HH:MM:SS")
    if ":" not in target:
        raise UsageError(f"target {target!r} must look like path/to/file.py:name")
    module = target.rpartition(":")[0]
    if module.endswith(".py") and not os.path.isfile(module):
        raise UsageError(f"target {target!r}: no such file {module}")
    if binds and not container:
        raise UsageError("--bind adds folders to the container: give --container IMAGE too")
    if mem is not None and not _MEM.match(mem):
        raise UsageError(f"--mem {mem!r}: use a size such as 16G, 4000M or 0 (all of the node)")
    for pattern in (output, error):
        _make_log_folder(pattern)
    worker_args = _worker_args(mode, signal_at, requeue, grace, checkpoint_dir,
                               keep_checkpoints, checkpoint_store)
    spec_from_options(directions, sampler, seed, pruner)  # checks the sampler before sbatch
    study = study_name or DEFAULT_STUDY
    storage = storage or DEFAULT_STORAGE
    workdir = os.getcwd()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study)
    text = render_script(
        target=target, nodes=nodes, tasks_per_node=tasks_per_node, gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task, time_limit=time_limit, partition=partition,
        container=container, storage=storage, study=study, n_trials=n_trials, mode=mode,
        spec_args=_spec_args(directions, sampler, seed, pruner, search_space_file()),
        workdir=workdir, job_name=job_name or f"tunefleet-{safe}", port=port,
        key_file=key_file or f".tunefleet-{safe}.key", account=account, qos=qos, mem=mem,
        gres=gres, constraint=constraint, extra_sbatch=extra_sbatch, output=output, error=error,
        binds=binds, trials_per_gpu=trials_per_gpu, signal=signal_at, requeue=requeue,
        worker_args=worker_args, storage_timeout=storage_timeout)
    path = script_path or f"tunefleet-{safe}.sbatch"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    name = job_name or f"tunefleet-{safe}"
    pattern = _batch_log(output or "%x-%j.out")

    def follow(job: str | None) -> str:
        log, left = expand_log(pattern, name, job)
        note = f" ({' '.join(left)}: filled in by Slurm when the job runs)" if left else ""
        if job is None and "JOB" in log:
            note += f" (JOB: the job id sbatch prints; the pattern is {pattern})"
        return (f"follow it: squeue -j {job or 'JOB'}; tail -f {log}{note}; results: tunefleet "
                f"best --storage {_q(shown_url(storage))} --study {_q(study)}")

    if not submit:
        click.echo(text, nl=False)
        click.echo(f"# written to {path}; submit it with: sbatch {path}", err=True)
        click.echo(f"# {follow(None)}", err=True)
        return
    if shutil.which("sbatch") is None:
        raise UsageError(f"sbatch not found: run this on a Slurm login node (script kept in {path})")
    proc = subprocess.run(["sbatch", path], capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[:1]
        raise UsageError(f"sbatch refused {path}: {first[0] if first else proc.returncode}")
    match = re.search(r"(\d+)", proc.stdout)
    job = match.group(1) if match else "?"
    click.echo(f"submitted job {job} ({path}); {follow(job if match else None)}")
