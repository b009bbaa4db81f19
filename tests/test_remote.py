"""Sharing artifacts through an S3 DVC remote, against moto's S3 server on 127.0.0.1.

One clone runs the pipeline and pushes its outputs and run cache; a fresh clone pulls them and
has nothing left to run. Then the ways a remote can be wrong: each must end in a line that names
the cause, not in a traceback.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params_dict
from dvc_repo import DVC, make_repo, ran, repo_env, runner

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, for this module's tests; stopped after them."""
    if shutil.which("git") is None:
        pytest.skip("dvc needs git, which is not installed")
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")  # one log record per request would bury a failure
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


def create_bucket(endpoint: str, name: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=name)


def set_moto_auth(endpoint: str, on: bool) -> None:
    """With auth on, moto checks every request's keys against its IAM users, as S3 does."""
    body = b"0" if on else b"inf"  # requests served before auth starts
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def aws_env(repo: Path, **extra: str) -> dict[str, str]:
    """The repo's environment with no AWS settings from the machine running the tests."""
    env = {k: v for k, v in repo_env(repo).items() if not k.startswith("AWS_")}
    nowhere = str(repo.parent / "no-aws-config")
    return {
        **env,
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",  # no probing of a cloud metadata service for keys
        "AWS_DEFAULT_REGION": REGION,
        **extra,
    }


@dataclass(frozen=True)
class Origin:
    endpoint: str
    repo: Path  # ran the pipeline, committed it, and pushed it to its default remote, "storage"
    env: dict[str, str]


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3_endpoint) -> Origin:
    create_bucket(s3_endpoint, "artifacts")
    a = tmp_path_factory.mktemp("origin") / "a"
    params = tiny_params_dict()
    params["train"]["seeds"] = [7]  # one run per model is all that sharing needs
    make_repo(a, params)
    env = aws_env(a, **KEYS)  # credentials from AWS_* variables here; the clones use --local config
    sh = runner(a, env)
    assert {"train@birnn", "publish@birnn", "compare"} <= ran(sh(DVC, "repro"))
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "first run")
    sh(DVC, "remote", "add", "-d", "storage", "s3://artifacts/store")
    sh(DVC, "remote", "modify", "storage", "endpointurl", s3_endpoint)
    sh(DVC, "remote", "modify", "storage", "region", REGION)
    sh("git", "add", ".dvc/config")
    sh("git", "commit", "-qm", "S3 remote")
    assert "files pushed" in sh(DVC, "push", "--run-cache")
    return Origin(s3_endpoint, a, env)


def set_max_len(repo: Path, value: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["max_len"] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_fresh_clone_pulls_what_another_pushed_and_reruns_nothing(tmp_path, origin):
    a, b = origin.repo, tmp_path / "b"
    sh = runner(a, origin.env)
    sh("git", "clone", "-q", str(a), str(b))
    sh_b = runner(b, aws_env(b))
    sh_b(DVC, "remote", "modify", "--local", "storage", "access_key_id", KEYS["AWS_ACCESS_KEY_ID"])
    sh_b(DVC, "remote", "modify", "--local", "storage", "secret_access_key", KEYS["AWS_SECRET_ACCESS_KEY"])
    sh_b(DVC, "pull", "--run-cache")
    assert "secret_access_key" not in (b / ".dvc" / "config").read_text()
    assert sh_b("git", "status", "--porcelain") == ""  # config.local, and so the keys, stay out of git

    repro = sh_b(DVC, "repro")
    assert ran(repro) == set() and "Data and pipelines are up to date" in repro
    assert "epoch" not in repro  # nothing was trained
    for name in ("models/baseline.pt", "models/birnn.pt", "data/prepared/train.npz"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    predicted = json.loads(sh_b("pipeline", "predict", "The striker scored a late goal", "--json"))
    assert predicted["label"] in {"sport", "tech", "money"}

    # A variant whose outputs were pushed but never committed (as an experiment's can be) is
    # known to others through the run cache alone. DVC keeps no run cache for a stage with an
    # uncached output that is not a metric or a plot, so train (dvclive/), evaluate and compare
    # have none; download, prepare and publish do.
    set_max_len(a, 16)
    assert ran(sh(DVC, "repro", "prepare")) == {"check-params", "prepare"}  # a params change: checked first
    stats_16 = (a / "data/prepared/stats.json").read_bytes()
    sh(DVC, "push", "--run-cache", "data/prepared")
    sh("git", "checkout", "params.yaml", "dvc.lock")
    sh(DVC, "checkout", "data/prepared")

    sh_b(DVC, "pull", "--run-cache")
    set_max_len(b, 16)
    restored = sh_b(DVC, "repro", "--pull", "prepare")  # --pull fetches a run-cache hit's outputs
    assert ran(restored) == {"check-params"}  # only the params check runs; prepare is restored
    assert "Stage 'prepare' is cached - skipping run, checking out outputs" in restored
    assert (b / "data/prepared/stats.json").read_bytes() == stats_16


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_or_unreachable_remote_is_one_line_naming_the_cause(tmp_path, origin):
    # A pusher holding the origin's cache and a puller holding nothing, both fresh clones.
    pusher, puller = tmp_path / "pusher", tmp_path / "puller"
    for clone in (pusher, puller):
        runner(origin.repo, origin.env)("git", "clone", "-q", str(origin.repo), str(clone))
    shutil.copytree(origin.repo / ".dvc" / "cache", pusher / ".dvc" / "cache", dirs_exist_ok=True)

    def fails(cause: str, *, pull_cause: str | None = None, config: dict | None = None, **env: str) -> None:
        """`dvc push` from the pusher and `dvc pull` into the puller, with the remote's settings
        overridden by `config` (as `dvc remote modify --local` would) and the AWS variables by
        `env`, must each fail without a traceback, on a line naming the cause."""
        for repo, command, expected in ((pusher, "push", cause), (puller, "pull", pull_cause or cause)):
            local = repo / ".dvc" / "config.local"
            if config:
                local.write_text("['remote \"storage\"']\n" + "".join(f"    {k} = {v}\n" for k, v in config.items()))
            try:
                done = subprocess.run(
                    (DVC, command), cwd=repo, env=aws_env(repo, **env), capture_output=True, text=True, timeout=300
                )
            finally:
                local.unlink(missing_ok=True)
            output = done.stderr + done.stdout
            assert done.returncode != 0, f"dvc {command} succeeded:\n{output}"
            assert "Traceback" not in output, output
            assert any(expected in line for line in output.splitlines()), f"dvc {command}:\n{output}"

    # (a) No remote: the commit before one was added.
    for repo in (pusher, puller):
        runner(repo, aws_env(repo))("git", "checkout", "-q", "HEAD~1")
    fails("no remote specified", pull_cause="No remote provided and no default remote set", **KEYS)
    for repo in (pusher, puller):
        runner(repo, aws_env(repo))("git", "checkout", "-q", "-")

    # (c) No credentials, wrong ones, a bucket that does not exist.
    fails("Unable to locate credentials")
    set_moto_auth(origin.endpoint, on=True)
    try:
        fails("An error occurred (403)", **KEYS)  # keys that moto's IAM does not know
    finally:
        set_moto_auth(origin.endpoint, on=False)
    fails("The specified bucket does not exist", config={"url": "s3://no-such-bucket/store"}, **KEYS)

    # (b) Nothing listening at the endpoint. boto retries a refused connection for up to a
    # minute; one attempt is enough to see the line it ends with.
    endpoint = f"http://127.0.0.1:{closed_port()}"
    fails(
        f'Could not connect to the endpoint URL: "{endpoint}/',
        config={"endpointurl": endpoint},
        AWS_MAX_ATTEMPTS="1",
        **KEYS,
    )

    # With every override gone, the same clones push and pull.
    assert "Everything is up to date" in runner(pusher, aws_env(pusher, **KEYS))(DVC, "push")
    runner(puller, aws_env(puller, **KEYS))(DVC, "pull")
    assert (puller / "models/birnn.pt").read_bytes() == (origin.repo / "models/birnn.pt").read_bytes()
