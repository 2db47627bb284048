"""Two replicas x two stages behind one Serve proxy, sharing a real PostgreSQL job store: the queue is shared,
a killed replica loses nothing, and a database restart gives 503 + Retry-After (never 500) and loses nothing."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from svdpipe.service.config import ServiceConfig
from tests.pg import PgCluster, find_bin_dir
from tests.ray.conftest import serving, small_engine
from tests.ray.test_service import SMALL, _create, _wait

pytestmark = pytest.mark.skipif(find_bin_dir() is None, reason="PostgreSQL binaries (initdb, pg_ctl) not installed")

APP = "svdpipe-replicas"


@pytest.fixture(scope="module")
def cluster():
    pg = PgCluster()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="module")
def replicas(ray_session, cluster, tmp_path_factory):
    config = ServiceConfig(
        data_dir=str(tmp_path_factory.mktemp("shared")),
        job_store=cluster.dsn,
        num_replicas=2,
        lease_s=3.0,
        poll_interval_s=0.2,
        store_retry_after_s=2,
        max_queue=50,
        replica_cpus=0.1,
        engine=small_engine("rep", max_inflight=2),
    )
    with serving(config, APP) as (client, _port):
        yield SimpleNamespace(client=client, config=config)


def _records(config: ServiceConfig, ids: list[str]):
    from svdpipe.service.store.postgres import PostgresJobStore

    with PostgresJobStore(config.job_store, config.data_dir) as store:  # type: ignore[arg-type]
        return [store.get(i) for i in ids]


def test_two_replicas_share_the_queue_and_each_job_runs_once(replicas):
    import ray

    ids = [_create(replicas.client, {**SMALL, "seed": str(i)}).json()["id"] for i in range(12)]
    for job_id in ids:
        assert _wait(replicas.client, job_id, ("completed", "failed"), timeout=300)["status"] == "completed"
    for job_id in ids:  # the proxy spreads these reads over both replicas; each serves every video
        assert replicas.client.get(f"/v1/videos/{job_id}/content").status_code == 200
    records = _records(replicas.config, ids)
    assert {r.attempts for r in records} == {1}  # none ran twice
    owners = {r.owner for r in records}
    assert len(owners) == 2  # both pipelines took jobs
    # each replica's stage actors carry its id in their names
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("rep-")}
    assert {n.split("-")[1] for n in names} == owners


def test_killing_a_replica_mid_job_loses_nothing(replicas):
    import ray

    ids = [
        _create(replicas.client, {**SMALL, "num_inference_steps": "12", "seed": str(i)}).json()["id"] for i in range(6)
    ]
    _wait(replicas.client, ids[0], ("in_progress",))
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::"))
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for job_id in ids:
        assert _wait(replicas.client, job_id, ("completed", "failed"), timeout=300)["status"] == "completed"
    assert all(replicas.client.get(f"/v1/videos/{i}/content").status_code == 200 for i in ids)


def test_database_restart_gives_503_with_retry_after_and_loses_nothing(replicas, cluster):
    ids = [
        _create(replicas.client, {**SMALL, "num_inference_steps": "10", "seed": str(i)}).json()["id"] for i in range(4)
    ]
    _wait(replicas.client, ids[0], ("in_progress",))
    cluster.stop()
    try:
        answers = [
            replicas.client.get(f"/v1/videos/{ids[0]}"),
            replicas.client.get("/v1/videos"),
            _create(replicas.client),
            replicas.client.post(f"/v1/videos/{ids[1]}/cancel"),
        ]
        time.sleep(2.0)  # jobs inside the pipelines carry on meanwhile
    finally:
        cluster.start()
    for resp in answers:
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "2"
        assert resp.json()["error"]["type"] == "service_unavailable_error"
    for job_id in ids:
        deadline = time.time() + 300
        while (resp := replicas.client.get(f"/v1/videos/{job_id}")).status_code == 503 and time.time() < deadline:
            time.sleep(0.2)
        assert _wait(replicas.client, job_id, ("completed", "failed"), timeout=300)["status"] == "completed"
