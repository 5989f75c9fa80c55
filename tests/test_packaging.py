"""asrhub as a user gets it from a wheel: ``python -m build`` makes a clean sdist and wheel
(``twine check`` passes), the wheel installed into a fresh virtualenv with no source tree on
its path serves the demo page and transcribes a real file; ``asrhub init`` writes the unit and
the commented config where systemd expects them.

The fresh venv is offline-safe and fast: the wheel goes in with ``--no-deps``; its
dependencies come from a folder of links to this project's venv packages (everything but
asrhub itself: no editable finder, no source checkout), named in a ``.pth`` file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from asrhub.testing import free_port, make_hub, manifest, wer

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
CLIP = "en/pocketsphinx_librivox_ss01_0890.wav"
BUNDLED = ["web/index.html", "web/app.js", "web/style.css", "web/pcm-worklet.js",
           "web/vendor/spark-md5.min.js", "systemd/asrhub.service", "systemd/asrhub.toml"]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build tools come from the test extra, nothing is downloaded. The
    # wheel is built from the unpacked sdist, so a file missing from the sdist fails here too.
    result = subprocess.run([PYTHON, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.mark.slow
def test_sdist_and_wheel_are_clean_and_pass_twine(dists):
    check = subprocess.run([PYTHON, "-m", "twine", "check", "--strict", str(dists["wheel"]),
                            str(dists["sdist"])], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    wheel_names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for name in BUNDLED:
        assert f"asrhub/{name}" in wheel_names, name
    assert any(n.startswith("asrhub_plugins/whisper/") for n in wheel_names)
    with tarfile.open(dists["sdist"]) as tar:
        sdist_names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in [*BUNDLED, "README.md", "setup.cfg", "pyproject.toml", "tests/conftest.py",
                 "deploy/grafana-dashboard.json", "deploy/prometheus-alerts.yml"]:
        assert name in sdist_names, name
    junk = [n for n in sdist_names | wheel_names
            if any(part in n for part in ("__pycache__", ".venv/", "bench/_work", "_artifacts/", ".pyc"))]
    assert not junk, junk


def fresh_venv(root: Path) -> Path:
    """A venv without system site-packages whose only extra path is a folder of links to the
    project venv's third-party packages (asrhub's own files and editable finder left out)."""
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    assert "include-system-site-packages = false" in (root / "venv" / "pyvenv.cfg").read_text()
    deps = root / "deps"
    deps.mkdir()
    project_site = next((VENV_BIN.parent / "lib").glob("python3*/site-packages"))
    for entry in project_site.iterdir():
        if entry.name.startswith(("asrhub", "__editable__", "_asrhub")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    (site / "_project_deps.pth").write_text(f"{deps}\n")
    return root / "venv" / "bin"


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "ASRHUB", "VIRTUAL_ENV", "PYTEST"))}
    return dict(env, HOME=str(home), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_the_page_and_transcribes(dists, tmp_path, testdata):
    bin_dir = fresh_venv(tmp_path)
    work = tmp_path / "work"  # the working directory holds nothing of the source tree
    work.mkdir()
    env = clean_env(work)
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                              "--disable-pip-version-check", "-q", str(dists["wheel"])],
                             capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert install.returncode == 0, install.stdout + install.stderr

    where = subprocess.run([str(bin_dir / "python"), "-c", (
        "import json, sys, importlib.metadata as md, asrhub, asrhub_plugins, asrhub.paths as p;"
        "print(json.dumps({'asrhub': asrhub.__file__, 'plugins': asrhub_plugins.__path__[0],"
        "'web': str(p.web_dir()), 'dist': str(md.distribution('asrhub').locate_file('')),"
        "'path': sys.path}))")], capture_output=True, text=True, timeout=60, cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    found = json.loads(where.stdout)
    venv = str(bin_dir.parent)
    for key in ("asrhub", "plugins", "web", "dist"):
        assert found[key].startswith(venv), (key, found[key])
    assert not any(entry and Path(entry).resolve() == REPO for entry in found["path"]), found["path"]

    config = tmp_path / "asrhub.toml"
    probe = make_hub({})
    ptt, static = free_port(), free_port()
    lines = ['[server]', 'host = "127.0.0.1"', f'state_dir = "{tmp_path / "state"}"',
             'log_format = "json"', '', '[engines.whisper]', 'model = "tiny.en"', '']
    for name in probe.protocols:  # only the two listeners that serve the page
        lines += [f"[protocols.{name}]", f"enabled = {'true' if name in ('ptt', 'vad_stream') else 'false'}"]
        if name == "ptt":
            lines.append(f"port = {ptt}")
        if name == "vad_stream":
            lines += [f"port = {free_port()}", "", "[protocols.vad_stream.static]", f"port = {static}"]
        lines.append("")
    config.write_text("\n".join(lines))

    clip = testdata / CLIP
    result = subprocess.run([str(bin_dir / "asrhub"), "transcribe", str(clip), "--config", str(config)],
                            capture_output=True, text=True, timeout=600, cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert wer(manifest()[CLIP]["transcript"], result.stdout) <= 0.3, result.stdout

    server = subprocess.Popen([str(bin_dir / "asrhub"), "serve", "--config", str(config)], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no /health 200 within 180 s"
            try:
                if get(f"http://127.0.0.1:{ptt}/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        for url in (f"http://127.0.0.1:{ptt}/test", f"http://127.0.0.1:{static}/"):
            status, page = get(url)
            assert status == 200, (url, page[:300])
            assert "<title>asrhub" in page and "app.js" in page, page[:300]
        base = f"http://127.0.0.1:{static}/"
        for asset in ("app.js", "style.css", "pcm-worklet.js", "vendor/spark-md5.min.js"):
            status, body = get(base + asset)
            assert status == 200 and body.strip(), asset
            assert body == (bin_dir.parent.glob("lib/python3*/site-packages/asrhub/web").__next__()
                            / asset).read_text(encoding="utf-8")
        status, services = get(f"http://127.0.0.1:{ptt}/services")
        assert status == 200 and "ptt" in services
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "asrhub"), *args], capture_output=True, text=True, timeout=120)


def test_init_writes_the_unit_and_config_and_refuses_to_overwrite(tmp_path):
    import configparser
    import tomllib

    first = run_cli("init", "--prefix", str(tmp_path), "--bin-dir", "/srv/asrhub/venv/bin")
    assert first.returncode == 0, first.stderr
    unit_path = tmp_path / "etc/systemd/system/asrhub.service"
    config_path = tmp_path / "etc/asrhub/asrhub.toml"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(unit_path)
    assert unit["Service"]["ExecStart"].startswith("/srv/asrhub/venv/bin/asrhub serve --config "
                                                   "${CONFIGURATION_DIRECTORY}/asrhub.toml")
    assert unit["Service"]["ConfigurationDirectory"] == "asrhub"  # /etc/asrhub, where init wrote
    assert unit_path.stat().st_mode & 0o777 == 0o644
    assert config_path.stat().st_mode & 0o777 == 0o640
    text = config_path.read_text()
    assert text.lstrip().startswith("#") and "check-config" in text  # commented for the reader
    tomllib.loads(text)
    check = run_cli("check-config", "--config", str(config_path))
    assert check.returncode == 0, check.stderr

    config_path.write_text("# mine\n")
    again = run_cli("init", "--prefix", str(tmp_path))
    assert again.returncode == 1 and "--force" in again.stderr
    assert config_path.read_text() == "# mine\n"  # nothing written, not even the unit
    forced = run_cli("init", "--prefix", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert config_path.read_text() == text.replace("/srv/asrhub/venv/bin", str(VENV_BIN))
    # without --bin-dir: the asrhub that ran init
    assert f"ExecStart={VENV_BIN}/asrhub serve" in unit_path.read_text()


def test_init_says_in_words_when_it_cannot_write(tmp_path):
    (tmp_path / "etc").write_text("a file where the folder should be\n")
    result = run_cli("init", "--prefix", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("asrhub: cannot write ") and "Traceback" not in result.stderr
