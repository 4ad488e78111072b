"""``/metrics`` after a replayed call: what an operator's Prometheus would read from each process.

The real app (werkzeug) answers the webhook, ``painline stream``'s server (in this process, with the
routes ``painline stream`` serves) takes the socket, and a real RQ worker scores the utterances. The
metrics are per process and cumulative, so every check is a difference between two scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Retry
from sqlalchemy import select

from painline.app import settings_of, telephony_config
from painline.replay import replay_call
from painline.stream import stream_routes
from painline.workers import PainlineSimpleWorker, count_failed_job
from schema.models import Utterance
from telephony.stream_server import StreamServer, StreamServerOptions
from tests.app_fixtures import AUTH_TOKEN, AppServer
from tests.e2e_fixtures import call_audio, call_id_of, run_worker
from tests.stream_servers import running_stream_server
from tests.worker_fixtures import calm, pain
from worker.context import WorkerContext

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.status_code
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def stream_server(app_server: AppServer) -> Iterator[StreamServer]:
    app = app_server.app
    routes = stream_routes(app.extensions["painline.engine"], app.extensions["painline.redis"], app_server.queue)
    options = StreamServerOptions(port=0, drain_s=0.0, routes=routes)
    config = telephony_config(settings_of(app))
    with running_stream_server(app.extensions["painline.sessions"], app_server.queue, config, options) as server:
        yield server


def test_metrics_follow_a_replayed_call_from_socket_to_score(
    app_server: AppServer, stream_server: StreamServer, shipped_context: WorkerContext
) -> None:
    stream_metrics = f"http://127.0.0.1:{stream_server.port}/metrics"
    before = scrape(stream_metrics)
    result = replay_call(
        call_audio(calm(140.0, seed=1), pain(140.0, seed=2), pain(150.0, seed=3)),
        base_url=app_server.url,
        public_url=app_server.url,
        auth_token=AUTH_TOKEN,
        speed=0,
        status_callbacks=False,
        stream_base_url=f"http://127.0.0.1:{stream_server.port}",
    )
    assert result.close_code == 1000
    queued = scrape(f"{app_server.url}/metrics")  # the web process: queue depth, read from Redis
    run_worker(app_server)
    after = scrape(stream_metrics)
    with app_server.app.extensions["painline.sessions"]() as session:
        call_id = call_id_of(app_server, result.call_sid)
        utterances = len(session.scalars(select(Utterance.id).where(Utterance.call_id == call_id)).all())
    assert utterances >= 2

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "painline_calls_active") == 0
    assert delta("painline_streams_ended_total") == 1
    assert delta("painline_frames_received_total") == result.media_messages
    assert delta("painline_frame_lag_seconds_count") == result.media_messages
    assert delta("painline_frames_lost_total", cause="late") == 0
    assert delta("painline_stream_utterances_total", fate="saved") == utterances
    # the worker ran in this process, so this registry holds its metrics too
    assert delta("painline_utterance_to_score_seconds_count") == utterances
    assert value(after, "painline_utterance_to_score_seconds_bucket", le="+Inf") >= utterances
    queue = app_server.queue.name
    assert value(queued, "painline_queue_depth", queue=queue) == utterances + 1  # scores and the finalise job
    assert value(after, "painline_queue_depth", queue=queue) == 0
    text = requests.get(stream_metrics, timeout=10).text
    leaked = [line for line in text.splitlines() if result.call_sid in line]
    assert not leaked, leaked


def test_web_metrics_are_not_served_through_the_proxy(app_server: AppServer) -> None:
    assert requests.get(f"{app_server.url}/metrics", timeout=10).status_code == 200
    relayed = requests.get(f"{app_server.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert relayed.status_code == 404


def fails(_: int) -> None:
    raise RuntimeError("always")


def test_failed_jobs_are_counted_as_retried_then_failed(app_server: AppServer) -> None:
    queue: Queue = app_server.queue
    before = scrape(f"{app_server.url}/metrics")
    queue.enqueue(fails, 1, retry=Retry(max=1))
    worker = PainlineSimpleWorker(
        [queue], connection=queue.connection, job_class=queue.job_class, exception_handlers=[count_failed_job]
    )
    worker.work(burst=True, logging_level="WARNING")  # fails, is queued again at once, fails for good
    after = scrape(f"{app_server.url}/metrics")
    retried = value(after, "painline_jobs_retried_total", job="fails") - value(
        before, "painline_jobs_retried_total", job="fails"
    )
    failed = value(after, "painline_jobs_failed_total", job="fails") - value(
        before, "painline_jobs_failed_total", job="fails"
    )
    assert (retried, failed) == (1, 1)
    assert value(after, "painline_queue_failed", queue=queue.name) == 1
