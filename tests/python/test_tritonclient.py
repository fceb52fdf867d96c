"""NVIDIA's tritonclient, written for Triton and never for Augur, against a running Augur over
the Open Inference Protocol's HTTP and gRPC bindings: readiness, metadata, infer on every
member and on augur-ensemble (the same probabilities as `augur replay`, 1e-6), the repository's
index, unload and load, statistics, and the errors it raises.

Started by tests/oip.rs (cargo test, so scripts/test.sh), which starts the service and writes
the case: the addresses, the bearer token, 40 real AAPL feature vectors and what replay
predicted for the last one (AUGUR_OIP_CASE, a JSON file).
"""
import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

with open(os.environ["AUGUR_OIP_CASE"]) as f:
    CASE = json.load(f)
HEADERS = {"authorization": f"Bearer {CASE['token']}"}
VECTORS = np.array(CASE["vectors"], dtype=np.float32)


class Client:
    """One transport's client, and the few calls whose spelling differs between them."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "http":
            self.mod, self.c = httpclient, httpclient.InferenceServerClient(CASE["http"])
        else:
            self.mod, self.c = grpcclient, grpcclient.InferenceServerClient(CASE["grpc"])

    def metadata(self, model, version=""):
        if self.kind == "http":
            return self.c.get_model_metadata(model, version)
        return self.c.get_model_metadata(model, version, as_json=True)

    def server_metadata(self):
        if self.kind == "http":
            return self.c.get_server_metadata()
        return self.c.get_server_metadata(as_json=True)

    def index(self):
        if self.kind == "http":
            return self.c.get_model_repository_index()
        return self.c.get_model_repository_index(as_json=True).get("models", [])

    def stats(self, model):
        if self.kind == "http":
            s = self.c.get_inference_statistics(model)
        else:
            s = self.c.get_inference_statistics(model, as_json=True)
        (m,) = s["model_stats"]
        return int(m["inference_stats"]["success"].get("count", 0))

    def infer(self, model, x, outputs=None, binary=True, headers=HEADERS, name="window", parameters=None):
        inp = self.mod.InferInput(name, list(x.shape), "FP32")
        if self.kind == "http":
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [self.mod.InferRequestedOutput(o, binary_data=binary) for o in outputs or []]
        else:
            inp.set_data_from_numpy(x)
            outs = [self.mod.InferRequestedOutput(o) for o in outputs or []]
        # A copy: tritonclient.http writes Inference-Header-Content-Length into the dict it is
        # given, and the next call (JSON, or gRPC, whose metadata must be text) would send it.
        return self.c.infer(model, [inp], outputs=outs or None, headers=dict(headers), parameters=parameters)


@pytest.fixture(params=["http", "grpc"])
def client(request):
    return Client(request.param)


def window_of(client, model):
    shape = [int(d) for d in client.metadata(model)["inputs"][0]["shape"]]
    assert shape[0] == -1 and shape[2] == VECTORS.shape[1], shape
    return VECTORS[-shape[1]:][None, ...]


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def test_server_and_every_model_are_live_and_ready(client):
    assert client.c.is_server_live()
    assert client.c.is_server_ready()
    meta = client.server_metadata()
    assert meta["name"] == "augur"
    assert "binary_tensor_data" in meta["extensions"]
    names = [m["name"] for m in CASE["members"]] + ["augur-ensemble"]
    for name in names:
        assert client.c.is_model_ready(name), name
    # A version that is not loaded: not ready over HTTP (404), NOT_FOUND over gRPC.
    if client.kind == "http":
        assert not client.c.is_model_ready("lstm-direction", "999")
    else:
        with pytest.raises(InferenceServerException, match="no version"):
            client.c.is_model_ready("lstm-direction", "999")
    md = client.metadata("lstm-direction", CASE["members"][0]["version"])
    assert md["versions"] == [CASE["members"][0]["version"]]
    assert [o["name"] for o in md["outputs"]] == ["probabilities", "direction", "forecasts"]


@pytest.mark.parametrize("binary", [True, False])
def test_every_member_and_the_ensemble_equal_replay(client, binary):
    for m in CASE["members"]:
        r = client.infer(m["name"], window_of(client, m["name"]), binary=binary)
        got = r.as_numpy("probabilities")
        assert got.shape == (1, 3)
        np.testing.assert_allclose(got[0], m["probabilities"], rtol=0, atol=1e-6)
    r = client.infer("augur-ensemble", window_of(client, "augur-ensemble"), binary=binary)
    np.testing.assert_allclose(r.as_numpy("probabilities")[0], CASE["ensemble"]["probabilities"], rtol=0, atol=1e-6)
    assert text(r.as_numpy("direction")[0]) == CASE["ensemble"]["direction"]
    members = r.as_numpy("members")
    assert members.shape == (1, len(CASE["members"]), 3)
    for i, m in enumerate(CASE["members"]):
        np.testing.assert_allclose(members[0, i], m["probabilities"], rtol=0, atol=1e-6)


def member(name):
    (m,) = [m for m in CASE["members"] if m["name"] == name]
    return m


def test_forecasts_and_explanations_equal_replay(client):
    lstm, xgb = member("lstm-direction"), member("xgb-direction")
    x = window_of(client, "lstm-direction")
    r = client.infer("lstm-direction", np.concatenate([x, x]), outputs=["forecasts"])
    f = r.as_numpy("forecasts")
    assert f.shape == (2, 4, 5)
    for row in f:
        np.testing.assert_allclose(row.ravel(), lstm["forecasts"], rtol=0, atol=1e-6)
    md = client.metadata("xgb-direction")
    assert [o["name"] for o in md["outputs"]][2:] == ["contributions", "contribution_features"]
    r = client.infer(
        "xgb-direction",
        window_of(client, "xgb-direction"),
        outputs=["contributions", "contribution_features"],
        parameters={"explain_top_k": 3},
    )
    c = r.as_numpy("contributions")
    assert c.shape == (1, 4)
    np.testing.assert_allclose(c[0], xgb["contributions"], rtol=0, atol=1e-6)
    assert [text(v) for v in r.as_numpy("contribution_features")[0]] == xgb["features"]
    assert xgb["features"][-1] == "bias"


def test_several_rows_and_a_chosen_output(client):
    x = window_of(client, "augur-ensemble")
    rows = np.concatenate([x, x * 0.5, x], axis=0)
    r = client.infer("augur-ensemble", rows, outputs=["probabilities"])
    p = r.as_numpy("probabilities")
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p[0], p[2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(p[0], CASE["ensemble"]["probabilities"], rtol=0, atol=1e-6)
    assert r.as_numpy("members") is None


def test_unload_and_load_a_member_through_the_repository_calls(client):
    client.c.unload_model("cnn-pattern", headers=dict(HEADERS))
    try:
        assert not client.c.is_model_ready("cnn-pattern")
        states = {m["name"]: m["state"] for m in client.index()}
        assert states["cnn-pattern"] == "UNAVAILABLE"
        assert states["lstm-direction"] == "READY"
        r = client.infer("augur-ensemble", window_of(client, "augur-ensemble"))
        assert r.as_numpy("members").shape == (1, len(CASE["members"]) - 1, 3)
        with pytest.raises(InferenceServerException, match="unloaded"):
            client.infer("cnn-pattern", window_of(client, "cnn-pattern"))
    finally:
        client.c.load_model("cnn-pattern", headers=dict(HEADERS))
    assert client.c.is_model_ready("cnn-pattern")
    r = client.infer("augur-ensemble", window_of(client, "augur-ensemble"))
    np.testing.assert_allclose(r.as_numpy("probabilities")[0], CASE["ensemble"]["probabilities"], rtol=0, atol=1e-6)


def test_statistics_count_the_calls(client):
    before = client.stats("xgb-direction")
    client.infer("xgb-direction", window_of(client, "xgb-direction"))
    client.infer("xgb-direction", window_of(client, "xgb-direction"))
    assert client.stats("xgb-direction") == before + 2


def test_errors_carry_the_servers_reason(client):
    x = window_of(client, "xgb-direction")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("no-such-model", x)
    with pytest.raises(InferenceServerException, match="bearer token"):
        client.infer("xgb-direction", x, headers={})
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("xgb-direction", np.concatenate([x, x], axis=1))
    with pytest.raises(InferenceServerException, match="input"):
        client.infer("xgb-direction", x, name="not-window")
    with pytest.raises(InferenceServerException, match="last member|only members"):
        client.c.unload_model("augur-ensemble", headers=dict(HEADERS))
