"""A packed corpus read from S3 (issue #21): moto's S3 server on a local port stands in for the store,
boto3 uploads the pack, and PackedImages reads it through wids' downloader with the real AWS CLI, which
finds the server through AWS_ENDPOINT_URL as it would a MinIO store. A missing object, or no CLI at all,
is one line naming the URL."""
from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from medssl_bench.harness.corpus import build_corpus
from medssl_bench.harness.corpus_pack import pack_corpus, shard_name
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.packed_reader import PackedImages
from medssl_bench.harness.workspace import Workspace

BUCKET = "medssl-packs"


@pytest.fixture
def pack(tmp_path):
    """A pack of 30 phantom images (PNG, JPEG, DICOM, NIfTI slices) in 3 shards of 12."""
    from medssl_bench.downstream.phantoms import synthesize_corpus

    synthesize_corpus(tmp_path / "src", n=30, seed=0, size=48)
    corpus = build_corpus([tmp_path / "src"], Workspace(tmp_path / "ws"))
    return pack_corpus(corpus, max_side=64, shard_images=12, workers=1)


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """moto's S3 server on a free local port, and the environment the AWS CLI reads: the endpoint, dummy
    credentials and a region; empty config files so no user profile on the machine changes anything."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    (tmp_path / "aws-config").write_text("")
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-config"),
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)  # the CLI subprocess inherits them
    import boto3

    client = boto3.client("s3")  # boto3 reads the same environment
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def test_a_pack_on_s3_reads_the_local_pixels_through_the_aws_cli(pack, s3, tmp_path):
    for path in sorted(pack.iterdir()):
        s3.upload_file(str(path), BUCKET, f"corpora/{pack.name}/{path.name}")
    local = PackedImages(pack)
    remote = PackedImages(f"s3://{BUCKET}/corpora/{pack.name}", cache_dir=tmp_path / "cache")
    assert len(remote) == len(local) == 30
    for index in (29, 0, 12, 13):  # last shard first: shards are fetched on first use, in any order
        assert np.array_equal(remote.pixels(index), local.pixels(index))
    cached = tmp_path / "cache"
    assert sorted(p.name for p in cached.rglob("*.tar")) == [shard_name(0), shard_name(1), shard_name(2)]
    assert not list(cached.rglob("*.part"))
    for tar in cached.rglob("*.tar"):  # whole objects, byte for byte
        assert tar.read_bytes() == (pack / tar.name).read_bytes()


def test_a_missing_s3_object_is_one_line_naming_the_url(pack, s3, tmp_path):
    url = f"s3://{BUCKET}/corpora/absent"
    with pytest.raises(UserError) as err:
        PackedImages(url, cache_dir=tmp_path / "cache")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{url}/pack.json: download failed:") and "404" in line, line
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no partial file left behind


def test_no_aws_cli_is_one_line(monkeypatch, tmp_path):
    # neither beside this Python nor on PATH
    monkeypatch.setattr("sys.executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(UserError, match=r"^s3://b/p/pack.json: reading s3:// needs the AWS CLI"):
        PackedImages("s3://b/p", cache_dir=tmp_path / "cache")


def test_a_missing_http_object_is_one_line_not_an_error_page_saved_as_the_file(pack, tmp_path):
    # curl without --fail saves the server's 404 page as pack.json; the handler makes it an error
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(pack.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/absent"
        with pytest.raises(UserError, match=rf"^{url}/pack.json: download failed: curl: \(22\) .*404"):
            PackedImages(url, cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
