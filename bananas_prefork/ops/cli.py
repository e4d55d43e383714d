"""The ``bananas-prefork`` command: thin wrappers over the modules that do the work.

User mistakes (a bad file, bad input, no master running) print one line on
stderr and exit with the contract's code, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer

from ..core import config as config_module
from ..core.config import ConfigError, Deployment
from ..core.connection import redact
from ..core.errors import describe
from ..core.text import literal, one_line
from ..supervisor import loader
from . import launch
from .exit_codes import EXIT_ALERTING, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE

cli = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="bananas-prefork: a Redis job queue with a prefork supervisor.")

FileArg = Annotated[Path | None, typer.Argument(
    help="Deployment file (TOML). Without it: the environment (WORKER_*, BANANAS_APP, .env).",
    show_default=False)]


def fail(message: object, code: int) -> NoReturn:
    typer.echo(f"bananas-prefork: {message}", err=True)
    raise typer.Exit(code)


def load_deployment(path: Path | None) -> Deployment:
    try:
        return config_module.load(path)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)


@cli.command()
def start(
    file: FileArg = None,
    log_level: Annotated[str | None, typer.Option(
        help="debug, info, warning or error (overrides the file).")] = None,
    log_format: Annotated[str | None, typer.Option(
        help="text or json (overrides the file).")] = None,
) -> None:
    """Run the master in the foreground (systemd Type=notify ready)."""
    try:
        code = launch.run(file, log_level, log_format)
    except launch.StartError as exc:
        fail(exc, exc.code)
    raise typer.Exit(code)


@cli.command()
def check(file: Annotated[Path, typer.Argument(help="Deployment file (TOML).")]) -> None:
    """Validate a deployment file (and import its app) without starting anything."""
    deployment = load_deployment(file)
    try:
        app = loader.import_app(deployment)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    typer.echo(f"{file}: OK (app {deployment.app}, {len(app.tasks)} task(s))")
    for line in config_module.describe(deployment):
        typer.echo(f"  {line}")


def _signal_master(file: Path | None, signum: int, action: str) -> Any:
    """The master named by the pidfile, signalled (a psutil.Process)."""
    from ..supervisor.pidfile import PidfileError, signal_master

    source, pidfile = _pidfile_of(file, lenient=signum == signal.SIGTERM)
    if not pidfile:
        fail(f"{source}: no pidfile is configured, so there is no master to {action}", EXIT_FAILURE)
    try:
        return signal_master(pidfile, signum)
    except PidfileError as exc:
        fail(exc, EXIT_FAILURE)


def _pidfile_of(file: Path | None, lenient: bool) -> tuple[str, str | None]:
    """Where the master's pid is: the file's ``pidfile``, else BANANAS_PIDFILE (or .env).

    Nothing else is needed to signal a master, so the app is not required, and a
    stop (``lenient``) still finds the pidfile of a file that was broken since.
    """
    if file is None:
        from dotenv import dotenv_values

        pidfile = os.environ.get("BANANAS_PIDFILE") or (
            dotenv_values(".env").get("BANANAS_PIDFILE") if Path(".env").is_file() else None)
        return "environment (BANANAS_PIDFILE)", pidfile or None
    try:
        return str(file), config_module.load(file).pidfile
    except ConfigError as exc:
        pidfile = _raw_pidfile(file) if lenient else None
        if pidfile is None:
            fail(exc, EXIT_USAGE)
        return str(file), pidfile


def _raw_pidfile(file: Path) -> str | None:
    """The ``pidfile`` line of a file that no longer parses (it was edited since)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r'^\s*pidfile\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    return match.group(1) if match else None


@cli.command()
def reload(
    file: FileArg = None,
    code: Annotated[bool, typer.Option("--code", help="Roll every child onto fresh "
                                                      "application code (SIGUSR2).")] = False,
) -> None:
    """Reload the deployment file (SIGHUP), or the application code with --code."""
    master = _signal_master(file, signal.SIGUSR2 if code else signal.SIGHUP, "reload")
    typer.echo(f"sent {'SIGUSR2' if code else 'SIGHUP'} to master {master.pid}")


@cli.command()
def stop(
    file: FileArg = None,
    wait: Annotated[bool, typer.Option(help="Wait until the master has exited.")] = False,
) -> None:
    """Stop the master gracefully (SIGTERM)."""
    master = _signal_master(file, signal.SIGTERM, "stop")
    typer.echo(f"sent SIGTERM to master {master.pid}")
    while wait and _alive(master):
        time.sleep(0.1)


def _alive(process: Any) -> bool:
    """Whether a psutil.Process still runs (a zombie has exited)."""
    import psutil

    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _json_arg(text: str | None, expected: type, option: str) -> Any:
    if text is None:
        return expected()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option}: not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, expected):
        fail(f"{option}: must be a JSON {'array' if expected is list else 'object'}", EXIT_USAGE)
    return value


def _client_app(redis_url: str | None, namespace: str | None, file: Path | None,
                redis_file: Path | None = None) -> Any:
    """An App for reading and writing jobs: --redis (or --redis-file)/--namespace, else the
    deployment file, else the environment."""
    from ..core.app import App
    from ..core.connection import EMBEDDED, read_url_file, resolve, url_problem
    from ..core.embedded import RedisUnavailable, running_url
    from ..core.keys import namespace_problem

    if redis_file is not None:
        if redis_url is not None:
            fail("give --redis or --redis-file, not both", EXIT_USAGE)
        try:
            redis_url = read_url_file(redis_file)
        except ValueError as exc:
            fail(f"--redis-file: {exc}", EXIT_USAGE)

    for option, given, problem_of in (("--redis", redis_url, url_problem),
                                      ("--namespace", namespace, namespace_problem)):
        if given is not None and not given.strip():
            fail(f"{option}: must not be empty", EXIT_USAGE)
        if given and given != EMBEDDED and (problem := problem_of(given)):
            fail(f"{option}: {problem}", EXIT_USAGE)
    deployment = load_deployment(file) if file else None
    url = redis_url or (deployment.redis_url if deployment else None)
    if deployment is not None and url in (None, EMBEDDED):
        running = running_url(deployment.data_dir)
        if running is None and url == EMBEDDED:  # never another Redis in its place
            fail(f'{deployment.source}: redis_url = "embedded", and no embedded Redis runs '
                 f"from {deployment.data_dir}: start the master first, or pass --redis",
                 EXIT_FAILURE)
        url = running
    ns = namespace or (deployment.namespace if deployment else None)
    try:  # a command never starts a server: it works with one that runs
        app = App(resolve(url), namespace=ns)
    except RedisUnavailable as exc:
        fail(exc, EXIT_FAILURE)
    except ValueError as exc:  # from the environment: the message names the variable
        fail(exc, EXIT_USAGE)
    return app


RedisOpt = Annotated[str | None, typer.Option("--redis", help=(
    "Redis URL (redis://, rediss://, unix:// or redis+sentinel://). It shows in ps: prefer "
    "--redis-file or the environment for one with a password."))]
RedisFileOpt = Annotated[Path | None, typer.Option(
    "--redis-file", help="A file holding the Redis URL (keeps a password off the command "
                         "line; BANANAS_REDIS_URL_FILE does the same).", show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option(help="Key namespace.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Read Redis URL and "
                                                                 "namespace from this file.")]


@cli.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="Task name (job type).")],
    args: Annotated[str | None, typer.Option("--args", help="JSON array.")] = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="JSON object.")] = None,
    priority: Annotated[str | None, typer.Option(help="high, normal or low.")] = None,
    delay: Annotated[str | None, typer.Option(help='Seconds or a duration ("1m").')] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Idempotency key.")] = None,
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Enqueue a job by name and print its id.

    With --config (or BANANAS_APP) the app is imported so that the task's own
    defaults (priority, retries, timeout) apply, as they do for ``task.enqueue``.
    """
    app = _client_app(redis_url, namespace, config, redis_file)
    _learn_tasks(app, config)
    call_args = _json_arg(args, list, "--args")
    call_kwargs = _json_arg(kwargs, dict, "--kwargs")
    _broker_or_fail(app)
    try:
        job_id = app.enqueue(task, args=call_args, kwargs=call_kwargs, priority=priority,
                             delay=delay, job_id=job_id)
    except ValueError as exc:
        fail(exc, EXIT_USAGE)
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at {redact(app.redis_url)}: {describe(exc)}", EXIT_FAILURE)
    typer.echo(job_id)


def _learn_tasks(app: Any, file: Path | None) -> None:
    """Give the client the tasks of the deployment's app, if it can be imported here."""
    app_path = os.environ.get("BANANAS_APP")
    if file is None and not app_path:
        return
    try:
        deployment = load_deployment(file) if file else None
        imported = loader.import_app(deployment or Deployment(app=app_path or ""))
    except ConfigError as exc:
        typer.echo(f"bananas-prefork: warning: task defaults not applied: {exc}", err=True)
        return
    app.tasks.update(imported.tasks)


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ShowArgsOpt = Annotated[bool, typer.Option("--show-args", help="Also print job arguments "
                                                               "(they may hold secrets).")]


def _broker_or_fail(app: Any) -> Any:
    from ..core.embedded import RedisUnavailable

    try:
        app.broker.ping()
    except RedisUnavailable as exc:
        fail(exc, EXIT_FAILURE)
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at {redact(app.redis_url)}: {describe(exc)}", EXIT_FAILURE)
    return app.broker


@cli.command()
def status(
    file: FileArg = None,
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 3 when an alert is firing "
                                                        "(for monitoring probes).")] = False,
    processes: Annotated[bool | None, typer.Option(
        "--processes/--no-processes", help="Show every child (default: when few).",
        show_default=False)] = None,
    interval: Annotated[float, typer.Option(help="--watch refresh, seconds.")] = 1.0,
) -> None:
    """The whole cluster from Redis: nodes, pools, children, queues, scheduler, alerts."""
    from rich.console import Console

    from .status import gather
    from .status_view import render
    from .status_view import watch as watch_live

    alerts = load_deployment(file).alerts if file else None  # None: what the masters run
    broker = _broker_or_fail(_client_app(redis_url, namespace, file, redis_file))
    try:
        if watch and not as_json:
            watch_live(Console(), lambda: gather(broker, alerts), interval, processes)
            return
        data = gather(broker, alerts)
    except redis.RedisError as exc:
        fail(f"lost the connection to Redis: {exc}", EXIT_FAILURE)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        Console().print(render(data, processes))
    if check and data["alerts"]:
        raise typer.Exit(EXIT_ALERTING)


@cli.command()
def dashboard(
    file: FileArg = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
    bind: Annotated[str | None, typer.Option(help=(
        "HOST:PORT to listen on (default: the file's dashboard_bind and dashboard_port, "
        "else 127.0.0.1:8765)."), show_default=False)] = None,
    prefix: Annotated[str | None, typer.Option(help=(
        'Serve under this path behind a reverse proxy, e.g. "/bananas".'),
        show_default=False)] = None,
    show_args: ShowArgsOpt = False,
) -> None:
    """Serve the web dashboard: cluster, queues, scheduler, history, dead letters.

    Loopback by default. Retry and delete are on only with a token:
    dashboard_token in the file, or BANANAS_DASHBOARD_TOKEN.
    BANANAS_DASHBOARD_AUTH="user:password" asks every page for a login.
    """
    import dataclasses

    from ..core.settings import url_prefix
    from .dashboard.app import Options
    from .dashboard.server import parse_bind, serve

    deployment = load_deployment(file) if file else None
    try:
        options = Options.of(deployment)
        if prefix is not None:
            options = dataclasses.replace(options, prefix=url_prefix(prefix))
        host, port = parse_bind(bind or f"{deployment.dashboard_bind if deployment else ''}:"
                                       f"{(deployment and deployment.dashboard_port) or 8765}")
    except (ConfigError, ValueError) as exc:
        fail(exc, EXIT_USAGE)
    options = dataclasses.replace(options, show_args=options.show_args or show_args)
    broker = _broker_or_fail(_client_app(redis_url, namespace, file))
    try:
        serve(broker, host, port, options, deployment.alerts if deployment else None)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_FAILURE)
    except KeyboardInterrupt:
        pass


@cli.command()
def job(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    show_args: ShowArgsOpt = False,
) -> None:
    """One job: state, attempts, error, traceback, result."""
    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    info = broker.job_info(job_id)
    if info is None:
        fail(f"no job {one_line(repr(job_id))} (unknown, or its record expired)", EXIT_FAILURE)
    data = info.as_dict(with_args=show_args)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for key, value in data.items():
        if value is None or key == "traceback":
            continue
        if key.endswith("_at"):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + " UTC"
        shown = json.dumps(value) if key in ("result", "args", "kwargs") else str(value)
        typer.echo(f"{key:>13}: {one_line(shown)}")
    if data["traceback"]:
        typer.echo(literal(data["traceback"].rstrip()))


dead_cli = typer.Typer(no_args_is_help=True, help="Dead letters: jobs with no retry left.")
cli.add_typer(dead_cli, name="dead")


@dead_cli.command("list")
def dead_list(
    limit: Annotated[int, typer.Option(help="Most recent first, at most this many.")] = 50,
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    show_args: ShowArgsOpt = False,
) -> None:
    """List dead jobs with their errors."""
    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    jobs = broker.dead_jobs(limit)
    if as_json:
        typer.echo(json.dumps([j.as_dict(with_args=show_args) for j in jobs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("id", "type", "priority", "died (UTC)", "attempts", "error")
    for info in jobs:
        died = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.finished_at or 0))
        error = (info.error or "").splitlines()[0] if info.error else ""
        table.add_row(*(Text(one_line(cell)) for cell in (
            info.id, info.name, info.priority, died, str(info.attempts), error)))
    Console().print(table)
    typer.echo(f"{len(jobs)} dead job(s) shown; {broker.counts()['dead']} in all")


@dead_cli.command("retry")
def dead_retry(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Dead job ids.")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send dead jobs back to their queues with a fresh retry budget."""
    if not job_ids and not all_jobs:
        fail("give job ids, or --all", EXIT_USAGE)
    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    ids = broker.dead_ids() if all_jobs else list(job_ids or [])
    count = broker.requeue_dead(ids)
    if as_json:
        typer.echo(json.dumps({"requeued": count}))
    else:
        typer.echo(f"requeued {count} job(s)")
    if job_ids and count < len(job_ids):
        raise typer.Exit(EXIT_FAILURE)


@dead_cli.command("purge")
def dead_purge(
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete every dead job and its record."""
    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    count = broker.remove_dead(broker.dead_ids())
    typer.echo(json.dumps({"purged": count}) if as_json else f"purged {count} dead job(s)")


@cli.command()
def demo(
    rate: Annotated[float, typer.Option(help="Jobs per second to send.")] = 20.0,
    duration: Annotated[float | None, typer.Option(
        help="Seconds to run (default: until Ctrl-C).", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        help="Deployment to run (default: the demo's three pools).", show_default=False)] = None,
) -> None:
    """See it work: a master on the demo app, a steady mix of jobs, the live status table.

    Uses the configured Redis, else one on 127.0.0.1:6379, else an embedded one
    (data in ./.bananas). Ctrl-C stops the load, then the master, gracefully.
    """
    from .demo import DemoRunner

    raise typer.Exit(DemoRunner(rate, duration, config).run())


@cli.command()
def acl(
    namespace: Annotated[str | None, typer.Option(
        help="Key namespace (default: BANANAS_NAMESPACE, else bananas).",
        show_default=False)] = None,
    user: Annotated[str, typer.Option(help="The ACL user's name.")] = "bananas",
) -> None:
    """Print the minimal Redis ACL rule for a namespace: its keys, the commands used.

    Run it in redis-cli (or as a line of an ACL file), then give the user a
    password: ACL SETUSER NAME >password.
    """
    from ..core.keys import namespace_problem
    from .acl import rule

    namespace = namespace or os.environ.get("BANANAS_NAMESPACE") or "bananas"
    if problem := namespace_problem(namespace):
        fail(f"--namespace: {problem}", EXIT_USAGE)
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
        fail("--user: letters, digits and . _ @ - (at most 64)", EXIT_USAGE)
    typer.echo(rule(namespace, user))


periodic_cli = typer.Typer(no_args_is_help=True, help="The periodic schedule in Redis.")
cli.add_typer(periodic_cli, name="periodic")


@periodic_cli.command("list")
def periodic_list(
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every registered entry: schedule, next tick, which masters declare it."""
    from ..core import periodic

    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    entries = periodic.listing(broker)
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        when = entry["cron"] or f"every {entry['every']:g}s"
        tick = entry["next_tick"]
        next_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(tick)) \
            if isinstance(tick, float) else "-"
        flag = "  CONFLICT: declared differently" if entry["conflict"] else ""
        typer.echo(f"{entry['name']}: {entry['task']} ({entry['priority']}) {when}, next "
                   f"{next_at}, declared by {', '.join(entry['declared_by']) or 'nobody'}"
                   f"{flag}")
    if not entries:
        typer.echo("no periodic entries")


@periodic_cli.command("remove")
def periodic_remove(
    name: Annotated[str, typer.Argument(help="Entry name.")],
    redis_url: RedisOpt = None,
    redis_file: RedisFileOpt = None,
    namespace: NamespaceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Take an entry out of the schedule (masters that still declare it add it back)."""
    from ..core import periodic

    broker = _broker_or_fail(_client_app(redis_url, namespace, config, redis_file))
    if not periodic.remove(broker, name):
        fail(f"no periodic entry {name!r}", EXIT_FAILURE)
    typer.echo(f"removed periodic entry {name!r}")


def _hide_passwords_from_ps() -> None:
    """A URL given on the command line shows in ps for as long as the command runs
    (``status --watch`` for days): rewrite our title with its password redacted."""
    from setproctitle import setproctitle

    shown = [redact(arg) if "://" in arg else arg for arg in sys.argv]
    if shown != sys.argv:
        setproctitle(" ".join(["bananas-prefork", *shown[1:]]))


def main() -> None:
    """Console-script entry point: a Redis error met mid-command is one line, not a
    traceback (a missing ACL permission names the command)."""
    _hide_passwords_from_ps()
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except redis.RedisError as exc:
        typer.echo(f"bananas-prefork: redis: {describe(exc)}", err=True)
        sys.exit(EXIT_FAILURE)
