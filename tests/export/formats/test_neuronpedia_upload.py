import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mistudio_common.errors import FailedPrecondition, ResourceExhausted, Unavailable
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_upload import (
    DEFAULT_BASE_URL,
    UploadSettings,
    main,
    retry_after_seconds,
    upload_payloads,
)
from mistudio_export.formats.upload_payloads import write_upload_payloads

from tests.export.formats.builders import dashboard, naming


class FakeNeuronpedia(HTTPServer):
    """Records every request; answers with ``status``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.status = 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


class _Handler(BaseHTTPRequestHandler):
    server: FakeNeuronpedia

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def neuronpedia() -> Iterator[FakeNeuronpedia]:
    server = FakeNeuronpedia()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def payloads(tmp_path):
    write_upload_payloads(tmp_path, naming(), column_batches(dashboard(i) for i in range(130)))
    return tmp_path


def test_default_base_url_is_neuronpedia_api():
    assert DEFAULT_BASE_URL == "https://www.neuronpedia.org/api"
    assert UploadSettings(api_key="k").enabled is False


def test_upload_is_off_unless_enabled(neuronpedia, payloads):
    settings = UploadSettings(api_key="secret", base_url=neuronpedia.base_url)
    with pytest.raises(FailedPrecondition) as err:
        upload_payloads(payloads, settings)
    assert err.value.field == "enabled"
    assert neuronpedia.requests == []


def test_payloads_are_posted_in_order_with_the_api_key_header(neuronpedia, payloads):
    settings = UploadSettings(api_key="secret", base_url=neuronpedia.base_url, enabled=True)
    results = upload_payloads(payloads, settings)
    assert [r.file for r in results] == ["upload-batch-0.json", "upload-batch-1.json"]
    assert [path for path, _, _ in neuronpedia.requests] == ["/api/feature/upload-batch"] * 2
    assert all(headers["X-Api-Key"] == "secret" for _, headers, _ in neuronpedia.requests)
    assert [len(body["features"]) for _, _, body in neuronpedia.requests] == [128, 2]
    assert all(r.status == 200 for r in results)


def test_missing_api_key_is_refused_before_sending(neuronpedia, payloads):
    settings = UploadSettings(api_key="", base_url=neuronpedia.base_url, enabled=True)
    with pytest.raises(FailedPrecondition):
        upload_payloads(payloads, settings)
    assert neuronpedia.requests == []


def test_server_error_stops_the_upload_and_says_how_far_it_got(neuronpedia, payloads):
    neuronpedia.status = 500
    settings = UploadSettings(api_key="secret", base_url=neuronpedia.base_url, enabled=True)
    with pytest.raises(Unavailable) as err:
        upload_payloads(payloads, settings)
    assert "upload-batch-0.json" in str(err.value) and "HTTP 500" in str(err.value)
    assert len(neuronpedia.requests) == 1


def test_client_error_is_a_failed_precondition(neuronpedia, payloads):
    neuronpedia.status = 403
    settings = UploadSettings(api_key="secret", base_url=neuronpedia.base_url, enabled=True)
    with pytest.raises(FailedPrecondition):
        upload_payloads(payloads, settings)


def test_command_without_send_only_lists(neuronpedia, payloads, capsys):
    assert main([str(payloads), "--base-url", neuronpedia.base_url]) == 0
    assert "would POST upload-batch-0.json (128 features)" in capsys.readouterr().out
    assert neuronpedia.requests == []


def test_command_with_send_reads_the_key_from_the_environment(neuronpedia, payloads, monkeypatch):
    monkeypatch.setenv("MY_NP_KEY", "from-env")
    argv = [str(payloads), "--base-url", neuronpedia.base_url, "--api-key-env", "MY_NP_KEY"]
    assert main([*argv, "--send"]) == 0
    assert {headers["X-Api-Key"] for _, headers, _ in neuronpedia.requests} == {"from-env"}


def test_retry_after_is_read_as_seconds_or_an_http_date_else_doubling():
    assert retry_after_seconds("7", attempt=0) == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", attempt=0) == 0.0  # past
    assert [retry_after_seconds(None, attempt=a) for a in range(3)] == [1.0, 2.0, 4.0]


def test_a_429_that_persists_is_resource_exhausted_after_the_retries(neuronpedia, payloads):
    neuronpedia.status = 429
    settings = UploadSettings(
        api_key="secret", base_url=neuronpedia.base_url, enabled=True, max_retries=2, max_wait_s=0
    )
    with pytest.raises(ResourceExhausted) as err:
        upload_payloads(payloads, settings)
    assert "HTTP 429" in err.value.message
    assert len(neuronpedia.requests) == 3
