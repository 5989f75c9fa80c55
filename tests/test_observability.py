"""deploy/grafana-dashboard.json and deploy/prometheus-alerts.yml ask only for metrics the hub
exports: a real hub (tiny.en) serves a real streaming session and an error, /metrics is scraped,
and every metric name in every dashboard query, template variable and alert rule must be among
the scraped samples (with their _bucket/_total/_sum/_count suffixes)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from asrhub.audio import decode_file
from asrhub.testing import make_hub, running_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
ALERTS = DEPLOY / "prometheus-alerts.yml"
CLIP = "en/pocketsphinx_librivox_ss01_0890.wav"
METRIC = re.compile(r"\b(asrhub_[a-z0-9_]+)\b")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every scrape target


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels too) and template variable."""
    board = json.loads(DASHBOARD.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            if panel.get("type") == "row":
                walk(panel.get("panels", []))
                continue
            assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
            for target in panel["targets"]:
                out.append((f"panel {panel['title']!r}", target["expr"]))

    walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


async def scrape_after_traffic(testdata: Path) -> str:
    """A streaming session with real audio to its final, one error reply, then /metrics."""
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=["streaming_stt"])
    pcm = (np.clip(decode_file(testdata / CLIP), -1, 1) * 32767).astype("<i2").tobytes()
    async with running_server(hub, preload=True) as server:
        base = f"127.0.0.1:{server.ports['streaming_stt']}"
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://{base}/") as ws:
                assert (await ws.receive_json(timeout=30))["type"] == "connected"
                await ws.send_str("{not json")
                assert (await ws.receive_json(timeout=30))["type"] == "error"
                await ws.send_json({"command": "start"})
                for i in range(0, len(pcm), 6400):
                    await ws.send_bytes(pcm[i:i + 6400])
                await ws.send_json({"command": "stop"})
                seen: list[str] = []
                while "session_ended" not in seen:
                    seen.append((await ws.receive_json(timeout=120))["type"])
                assert "final" in seen
            await asyncio.sleep(0.3)  # the session summary (RTF) is recorded as the socket closes
            async with http.get(f"http://{base}/health") as resp:
                assert resp.status == 200
            async with http.get(f"http://{base}/metrics") as resp:
                assert resp.status == 200
                return await resp.text()


@pytest.fixture(scope="module")
def exported(testdata) -> dict[str, str]:
    """Sample name -> metric type, as scraped."""
    text = asyncio.run(scrape_after_traffic(testdata))
    names: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names[sample.name] = family.type
    return names


def test_the_scrape_has_the_series_the_dashboard_needs(exported):
    # sanity: the traffic above produced labelled histogram and counter samples
    for name in ("asrhub_final_latency_seconds_bucket", "asrhub_session_rtf_bucket",
                 "asrhub_errors_total", "asrhub_http_requests_total", "asrhub_inference_seconds_bucket",
                 "asrhub_event_loop_lag_seconds_bucket", "asrhub_executor_rejected_total"):
        assert name in exported, (name, sorted(exported))


def test_every_dashboard_query_names_exported_metrics(exported):
    queries = dashboard_queries()
    assert len(queries) >= 20
    for where, expr in queries:
        names = METRIC.findall(expr)
        assert names, f"{where}: no asrhub metric in {expr!r}"
        for name in names:
            assert name in exported, f"{where}: {name} is not exported (query {expr!r})"
        check_promql_shape(where, expr, exported)


def test_the_dashboard_covers_what_an_operator_watches():
    text = " ".join(expr for _, expr in dashboard_queries())
    for needed in ("asrhub_connections_open", "asrhub_audio_seconds_total",
                   "asrhub_final_latency_seconds_bucket", "asrhub_session_rtf_bucket",
                   "asrhub_executor_queue_depth", "asrhub_executor_busy_workers",
                   "asrhub_executor_rejected_total", "asrhub_event_loop_lag_seconds_bucket",
                   "asrhub_errors_total", "asrhub_http_requests_total"):
        assert needed in text, needed
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] == "asrhub"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_alert_rule_names_exported_metrics(exported):
    rules = alert_rules()
    assert len(rules) >= 8
    names_seen = set()
    for rule in rules:
        assert rule["alert"] and rule["expr"] and "for" in rule, rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"], rule
        names = set(METRIC.findall(rule["expr"]))
        assert names or PROMETHEUS_OWN & set(re.findall(r"\b[a-z_]+\b", rule["expr"])), rule["alert"]
        for name in names:
            assert name in exported, f"alert {rule['alert']}: {name} is not exported"
        check_promql_shape(f"alert {rule['alert']}", rule["expr"], exported)
        names_seen |= names
    for needed in ("asrhub_final_latency_seconds_bucket", "asrhub_session_rtf_bucket",
                   "asrhub_executor_rejected_total", "asrhub_event_loop_lag_seconds_bucket",
                   "asrhub_executor_queue_depth", "asrhub_errors_total", "asrhub_ready"):
        assert needed in names_seen, needed


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def check_promql_shape(where: str, expr: str, exported: dict[str, str]) -> None:
    """What a parser would refuse or Prometheus would compute wrong: unbalanced brackets,
    rate() of a gauge, a quantile of something that is not a histogram's buckets."""
    for opening, closing in ("()", "{}", "[]"):
        assert expr.count(opening) == expr.count(closing), f"{where}: unbalanced {opening}{closing}"
    for name in re.findall(r"\b(?:rate|increase|irate)\(\s*(asrhub_[a-z0-9_]+)", expr):
        assert name.endswith(COUNTER_SUFFIXES) and exported[name] in ("counter", "histogram"), \
            f"{where}: rate/increase of {name}, which is not a counter"
    for inner in re.findall(r"histogram_quantile\([^,]+,(.*)", expr):
        assert re.search(r"asrhub_[a-z0-9_]+_bucket\b", inner), f"{where}: quantile without _bucket"
        assert " le" in inner or "(le" in inner, f"{where}: quantile must keep the le label"
