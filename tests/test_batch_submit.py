"""``databridge-luigi submit`` against moto's server over HTTP, with Batch in its no-Docker backend
(databridge_luigi/batch.py). The moto server runs in this process, so MOTO_SIMPLE_BATCH_FAIL_AFTER set here
applies to it, and the CLI runs as a real subprocess pointed at it through AWS_ENDPOINT_URL."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import boto3
import pytest
import requests

from databridge_luigi import batch
from tests.conftest import create_postgis_database, drop_database, ensure_role
from tests.pipeline import Pipeline, make_points_table

SCRIPT = Path(sys.executable).parent / "databridge-luigi"
SOURCE_PW = "Src-pw-Batch-7731-zz"
DEST_PW = "Dst-pw-Batch-9902-qq"
SECRET_VALUES = (SOURCE_PW, DEST_PW)
SCHEDULED = "schedule_interval: 0 0 * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n"
MANUAL = "schedule_interval: false\nupload_to_carto: true\ncarto_users: [publicuser]\n"


@pytest.fixture(scope="module")
def batch_setup(moto_server):
    """IAM role, UNMANAGED compute environment, job queue and container job definition on the moto server."""
    assert requests.post(f"{moto_server}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10).ok
    kw = dict(endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    iam, client = boto3.client("iam", **kw), boto3.client("batch", **kw)
    suffix = uuid.uuid4().hex[:8]
    role = iam.create_role(RoleName=f"batch-role-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env = client.create_compute_environment(computeEnvironmentName=f"dbl-ce-{suffix}", type="UNMANAGED",
                                            state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    queue = client.create_job_queue(jobQueueName=f"dbl-queue-{suffix}", state="ENABLED", priority=1,
                                    computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}])["jobQueueName"]
    definition = client.register_job_definition(
        jobDefinitionName=f"dbl-worker-{suffix}", type="container",
        containerProperties={"image": "databridge-luigi:test", "command": ["PublishAll"],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]},
    )["jobDefinitionName"]
    return {"client": client, "queue": queue, "definition": definition, "url": moto_server}


@pytest.fixture()
def sent(monkeypatch):
    """Every SubmitJob request body the moto server received (it runs in this process), as parsed JSON:
    moto does not echo retryStrategy or resourceRequirements in DescribeJobs."""
    from moto.batch.responses import BatchResponse

    bodies: list[dict] = []
    name = "submit_job" if hasattr(BatchResponse, "submit_job") else "submitjob"  # moto 5.2 renamed the handler
    original = getattr(BatchResponse, name)

    def recording(self):
        bodies.append(json.loads(self.body))
        return original(self)

    monkeypatch.setattr(BatchResponse, name, recording)
    return bodies


@pytest.fixture()
def workspace(tmp_path, batch_setup, monkeypatch):
    """A config tree with two scheduled datasets and one manual one; a luigi.cfg with [databridge_batch]."""
    for rel, body in (("databridge/lni/violations.yml", SCHEDULED), ("databridge/lni/permits.yml", SCHEDULED),
                      ("databridge/dor/manual_one.yml", MANUAL)):
        path = tmp_path / "configs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(f"[databridge_batch]\njob_queue = {batch_setup['queue']}\njob_definition = {batch_setup['definition']}\n"
                   "vcpus = 2\nmemory_mib = 3072\ntimeout_seconds = 1800\nattempts = 3\nscheduler_host = luigid.internal\n")
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRIDGE_", "LUIGI_", "AWS_"))}
    env.update({
        "LUIGI_CONFIG_PATH": str(cfg), "DATABRIDGE_CONFIG_DIR": str(tmp_path / "configs"),
        "DATABRIDGE_STAGING": "s3://staging-bucket/databridge-luigi", "DATABRIDGE_SECRETS_ID": "databridge/connections",
        "DATABRIDGE_CONN_DATABRIDGE": f"postgresql://reader:{SOURCE_PW}@127.0.0.1:1/src",
        "DATABRIDGE_CONN_CARTO_PHL": f"postgresql://loader:{DEST_PW}@127.0.0.1:1/dest",
        "AWS_ENDPOINT_URL": batch_setup["url"], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    return {"root": tmp_path, "env": env, **batch_setup}


def submit(workspace, *args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "submit", "--poll-interval", "0.2", *args], cwd=workspace["root"],
                          env=workspace["env"], capture_output=True, text=True, timeout=60)


def job_ids(output: str) -> list[str]:
    return [line.rsplit(" as job ", 1)[1].split()[0] for line in output.splitlines() if " as job " in line]


def describe(workspace, ids: list[str]) -> list[dict]:
    return workspace["client"].describe_jobs(jobs=ids)["jobs"]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRET_VALUES:
            assert secret not in text


def test_job_fields_and_no_secrets_success_exit_0(workspace, sent):
    result = submit(workspace, "lni__violations", "lni__permits")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 succeeded, 0 failed" in result.stdout
    ids = job_ids(result.stdout)
    assert len(ids) == 2
    jobs = {j["jobName"]: j for j in describe(workspace, ids)}
    assert set(jobs) == {"databridge-lni__violations", "databridge-lni__permits"}
    job = jobs["databridge-lni__violations"]
    assert job["status"] == "SUCCEEDED"
    assert job["jobQueue"].endswith(workspace["queue"])
    assert workspace["definition"] in job["jobDefinition"]
    command = job["container"]["command"]
    assert command[:3] == ["Publish", "--dataset-id", "lni__violations"]
    version = command[command.index("--version") + 1]
    assert version.endswith("T000000Z")
    assert command[-4:] == ["--scheduler-host", "luigid.internal", "--scheduler-port", "8082"]
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env["DATABRIDGE_STAGING"] == "s3://staging-bucket/databridge-luigi"
    assert env["DATABRIDGE_SECRETS_ID"] == "databridge/connections"
    assert not any(name.startswith("DATABRIDGE_CONN_") for name in env)
    assert job["timeout"]["attemptDurationSeconds"] == 1800
    assert job["tags"]["databridge:dataset"] == "lni__violations"
    request = next(r for r in sent if r["jobName"] == "databridge-lni__violations")
    assert request["retryStrategy"] == {"attempts": 3}
    assert request["timeout"] == {"attemptDurationSeconds": 1800}
    assert request["containerOverrides"]["resourceRequirements"] == [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "3072"}]
    assert request["containerOverrides"]["command"] == command
    assert_no_secret(json.dumps(sent), json.dumps(list(jobs.values()), default=str), result.stdout, result.stderr)


def test_cli_overrides_and_no_wait(workspace):
    result = submit(workspace, "--all", "--no-wait", "--scheduler-host", "other-luigid", "--queue", workspace["queue"])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = describe(workspace, job_ids(result.stdout))
    assert sorted(j["jobName"] for j in jobs) == ["databridge-lni__permits", "databridge-lni__violations"]  # not the manual one
    assert all("other-luigid" in j["container"]["command"] for j in jobs)
    assert "succeeded" not in result.stdout


def test_manual_dataset_needs_force(workspace):
    refused = submit(workspace, "dor__manual_one")
    assert refused.returncode != 0 and "--force" in refused.stderr
    forced = submit(workspace, "dor__manual_one", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    command = describe(workspace, job_ids(forced.stdout))[0]["container"]["command"]
    assert "--force" in command and "--version" not in command


def test_failure_reports_and_exits_non_zero(workspace, monkeypatch):
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # read by the in-process moto server at job time
    result = submit(workspace, "lni__violations")
    assert result.returncode == batch.EXIT_FAILED, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "0 succeeded, 1 failed" in result.stdout
    assert "console.aws.amazon.com/cloudwatch" in result.stdout and "log stream" in result.stdout
    assert describe(workspace, job_ids(result.stdout))[0]["status"] == "FAILED"
    assert_no_secret(result.stdout, result.stderr)


def test_failure_report_names_reason_exit_code_and_log_link():
    class FakeClient:
        class meta:
            region_name = "us-east-1"

        def describe_jobs(self, jobs):
            return {"jobs": [{"jobId": jobs[0], "status": "FAILED", "statusReason": "Essential container in task exited",
                              "container": {"exitCode": 30, "reason": "OutOfMemoryError: Container killed",
                                            "logStreamName": "databridge-luigi/default/abc123"}}]}

    out = io.StringIO()
    submitter = batch.Submitter(batch.BatchSettings(), client=FakeClient(), out=out, sleep=lambda s: None)
    submitter.jobs.append(batch.Submitted("lni__violations", "job-1", "databridge-lni__violations"))
    assert submitter.wait(10) == batch.EXIT_FAILED
    text = out.getvalue()
    assert "Essential container in task exited" in text and "OutOfMemoryError" in text and "exit code 30" in text
    assert "log-group/$252Faws$252Fbatch$252Fjob/log-events/databridge-luigi$252Fdefault$252Fabc123" in text


def test_secret_in_environment_is_refused(monkeypatch):
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", f"postgresql://loader:{DEST_PW}@db:5432/x")
    monkeypatch.setenv("DATABRIDGE_STAGING", f"s3://bucket/{DEST_PW}")  # a secret value smuggled into a setting

    class NeverCalled:
        def submit_job(self, **kw):
            raise AssertionError("a request with a secret was sent")

    submitter = batch.Submitter(batch.BatchSettings(), client=NeverCalled(), out=io.StringIO())
    dataset = type("D", (), {"id": "lni__violations"})()
    with pytest.raises(batch.SecretInRequestError) as caught:
        submitter.submit([(dataset, "20261124T000000Z")])
    assert "DATABRIDGE_STAGING" in str(caught.value) and DEST_PW not in str(caught.value)
    with pytest.raises(batch.SecretInRequestError):
        batch.job_environment(batch.BatchSettings(forward_env=("DATABRIDGE_CONN_CARTO_PHL",)))


@pytest.fixture()
def hold_jobs_running(monkeypatch):
    """Make moto's no-Docker backend leave submitted jobs RUNNING (it normally finishes them inside SubmitJob)."""
    from moto.batch_simple.models import BatchSimpleBackend

    def running(self, include_start_attempt, job):
        self.backend._jobs[job.job_id] = job
        job.job_started_at = datetime.now()
        job.log_stream_name = job._stream_name
        job._start_attempt()
        job.status = "RUNNING"

    monkeypatch.setattr(BatchSimpleBackend, "_mark_job_as_finished", running)


def test_sigterm_terminates_the_running_job(workspace, hold_jobs_running):
    process = subprocess.Popen([str(SCRIPT), "submit", "--poll-interval", "0.2", "lni__violations"], cwd=workspace["root"],
                               env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = ""
    try:
        deadline = time.monotonic() + 30
        while " as job " not in output and time.monotonic() < deadline:
            output += process.stdout.readline()
        assert " as job " in output, output + process.stderr.read()
        time.sleep(0.5)  # it is polling now
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output += rest
    assert process.returncode == 143, output + errors
    job = describe(workspace, job_ids(output))[0]
    assert job["statusReason"] == "databridge-luigi submit interrupted by SIGTERM"
    assert "terminated job" in output
    assert_no_secret(output, errors)


def test_due_skips_a_published_dataset(tmp_path, workspace, monkeypatch, postgis_dsn):
    ensure_role("publicuser")
    dest = create_postgis_database("dbl_batch")
    try:
        pipeline = Pipeline(tmp_path / "pipe", postgis_dsn, dest, monkeypatch)
        make_points_table(pipeline, "gis_lni", "violations", 20)
        pipeline.config("lni__violations", SCHEDULED)
        from databridge_luigi.tasks import Publish

        assert pipeline.run(Publish(dataset_id="lni__violations")).ok
        env = dict(workspace["env"])
        env.update({"DATABRIDGE_CONN_CARTO_PHL": dest, "DATABRIDGE_CONN_DATABRIDGE": postgis_dsn})
        workspace = {**workspace, "env": env}
        result = submit(workspace, "--due")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "lni__violations: " in result.stdout and "already published, skipped" in result.stdout
        names = [j["jobName"] for j in describe(workspace, job_ids(result.stdout))]
        assert names == ["databridge-lni__permits"]
    finally:
        drop_database(dest)


def test_due_counts_an_unreachable_destination_as_due(workspace):
    result = submit(workspace, "--due", "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: lni__violations: cannot tell" in result.stdout
    assert len(job_ids(result.stdout)) == 2
    assert_no_secret(result.stdout, result.stderr)


def test_deadline_leaves_jobs_running_and_says_so():
    class Running:
        class meta:
            region_name = "us-east-1"

        def describe_jobs(self, jobs):
            return {"jobs": [{"jobId": j, "status": "RUNNING"} for j in jobs]}

    out = io.StringIO()
    submitter = batch.Submitter(batch.BatchSettings(), client=Running(), out=out, poll_initial=0.01)
    submitter.jobs += [batch.Submitted(f"d{i}", f"job-{i}", f"n{i}") for i in range(150)]  # > 100: two describe calls
    assert submitter.wait(0.05) == batch.EXIT_DEADLINE
    assert out.getvalue().count("still RUNNING at the deadline") == 150


def test_job_environment_carries_secret_names_only(monkeypatch):
    monkeypatch.setenv("DATABRIDGE_SECRETS_PREFIX", "databridge/conn/")
    monkeypatch.setenv("DATABRIDGE_SECRETS_ID", "databridge/connections")
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", f"postgresql://loader:{DEST_PW}@db:5432/x")
    env = {e["name"]: e["value"] for e in batch.job_environment(batch.BatchSettings())}
    assert env["DATABRIDGE_SECRETS_PREFIX"] == "databridge/conn/" and env["DATABRIDGE_SECRETS_ID"] == "databridge/connections"
    assert not any(name.startswith("DATABRIDGE_CONN_") for name in env) and DEST_PW not in json.dumps(env)
