"""Release-asset downloads against a local server that behaves like GitHub's (API host, 302, storage host)."""

import hashlib
import io
import json
import tarfile

import pytest

from deployer.adapters.github import GitHubHttp
from deployer.adapters.image_archive import PreloadedImage
from deployer.errors import AssetError
from deployer.plan.containers import Release
from deployer.worker import assets
from support.fake_github import FakeGitHub

REPO = "Codertocat/Hello-World"
TOKEN = "ghp_test_asset_token_0b9c"
IMAGE_BYTES = b"docker-save-archive " * 5000
CHECKSUM = f"{hashlib.sha256(IMAGE_BYTES).hexdigest()}  image.tar\n".encode()


@pytest.fixture
def github():
    with FakeGitHub(REPO, assets={11: IMAGE_BYTES, 12: CHECKSUM, 13: b"0" * 64 + b"\n"}, token=TOKEN) as fake:
        yield fake


def downloader(github, token=TOKEN):
    return assets.AssetDownloader(github.api_url, REPO, token, http=GitHubHttp(timeout=5))


def test_the_image_is_fetched_through_the_redirect_and_verified(github, tmp_path):
    result = downloader(github).download_image(
        {"id": 11, "name": "image.tar", "checksum_id": 12}, tmp_path, max_bytes=10**6
    )
    assert result.path.read_bytes() == IMAGE_BYTES
    assert (result.size, result.sha256, result.checksum_verified) == (
        len(IMAGE_BYTES),
        hashlib.sha256(IMAGE_BYTES).hexdigest(),
        True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]  # the .sha256 is not kept


def test_the_url_comes_from_the_configured_repository_and_the_asset_id(github, tmp_path):
    downloader(github).download_image({"id": 11, "name": "image.tar"}, tmp_path, max_bytes=10**6)
    assert [seen.path for seen in github.api_seen] == [f"/repos/{REPO}/releases/assets/11"]
    assert github.api_seen[0].headers["Accept"] == "application/octet-stream"


def test_the_token_goes_to_the_api_host_and_never_to_the_storage_host(github, tmp_path):
    downloader(github).download_image({"id": 11, "name": "image.tar", "checksum_id": 12}, tmp_path, max_bytes=10**6)
    assert [seen.headers.get("Authorization") for seen in github.api_seen] == [f"Bearer {TOKEN}"] * 2
    assert len(github.storage_seen) == 2
    assert all("Authorization" not in seen.headers for seen in github.storage_seen)
    assert all(TOKEN not in json.dumps(seen.headers) for seen in github.storage_seen)


def test_a_private_repository_without_the_token_is_a_clear_error(tmp_path):
    with FakeGitHub(REPO, assets={11: IMAGE_BYTES}, token=TOKEN, private=True) as github:
        with pytest.raises(AssetError) as caught:
            downloader(github, token=None).download_image({"id": 11, "name": "image.tar"}, tmp_path, max_bytes=10**6)
    assert str(caught.value) == (
        f"downloading asset image.tar (11) of {REPO} failed: HTTP 404 (a private repository needs asset.token_file)"
    )


def test_a_mismatching_checksum_refuses_the_image_and_removes_it(github, tmp_path):
    with pytest.raises(AssetError) as caught:
        downloader(github).download_image({"id": 11, "name": "image.tar", "checksum_id": 13}, tmp_path, max_bytes=10**6)
    assert str(caught.value).startswith("image.tar does not match image.tar.sha256 (got sha256:")
    assert list(tmp_path.iterdir()) == []


def test_without_a_checksum_asset_the_image_is_taken_unverified(github, tmp_path):
    result = downloader(github).download_image({"id": 11, "name": "image.tar"}, tmp_path, max_bytes=10**6)
    assert result.checksum_verified is False


def test_an_asset_over_the_cap_is_refused_by_its_declared_length(github, tmp_path):
    with pytest.raises(AssetError) as caught:
        downloader(github).download_image({"id": 11, "name": "image.tar"}, tmp_path, max_bytes=1000)
    assert str(caught.value) == f"asset image.tar is {len(IMAGE_BYTES)} bytes, over the limit of 1000"
    assert list(tmp_path.iterdir()) == []


def test_an_asset_over_the_cap_without_a_declared_length_is_cut_off(tmp_path):
    with FakeGitHub(REPO, assets={11: IMAGE_BYTES}, chunked=True) as github:
        with pytest.raises(AssetError) as caught:
            downloader(github, token=None).download_image({"id": 11, "name": "image.tar"}, tmp_path, max_bytes=1000)
    assert str(caught.value) == "asset image.tar is over the limit of 1000 bytes"
    assert list(tmp_path.iterdir()) == []


def test_a_chunked_asset_within_the_cap_downloads(tmp_path):
    with FakeGitHub(REPO, assets={11: IMAGE_BYTES}, chunked=True) as github:
        result = downloader(github, token=None).download_image(
            {"id": 11, "name": "image.tar"}, tmp_path, max_bytes=10**6
        )
    assert result.path.read_bytes() == IMAGE_BYTES


# --- the pure decisions -----------------------------------------------------------------------------


def test_the_authorization_header_is_kept_only_on_the_same_origin():
    api = "https://api.github.com/repos/o/r/releases/assets/1"
    headers = {"Authorization": "Bearer t", "Accept": "application/octet-stream"}
    assert assets.redirect_headers(api, "https://api.github.com/other", headers) == headers
    for target in (
        "https://objects.githubusercontent.com/x",
        "https://api.github.com:8443/x",
        "http://api.github.com/x",
        "https://evil.example/api.github.com",
    ):
        assert assets.redirect_headers(api, target, headers) == {"Accept": "application/octet-stream"}


def test_a_redirect_may_not_downgrade_to_plain_http():
    with pytest.raises(AssetError):
        assets.check_redirect("https://api.github.com/x", "http://objects.githubusercontent.com/x")
    with pytest.raises(AssetError):
        assets.check_redirect("https://api.github.com/x", "file:///etc/passwd")
    assets.check_redirect("https://api.github.com/x", "https://objects.githubusercontent.com/x")


@pytest.mark.parametrize("asset_id", [0, -1, True, "11", 1.5])
def test_asset_ids_must_be_positive_whole_numbers(asset_id):
    with pytest.raises(AssetError):
        assets.asset_url("https://api.github.com", REPO, asset_id)


def test_the_asset_url():
    assert (
        assets.asset_url("https://api.github.com/", REPO, 11)
        == "https://api.github.com/repos/Codertocat/Hello-World/releases/assets/11"
    )


@pytest.mark.parametrize(
    "text, digest",
    [
        (b"ab" * 32 + b"  image.tar\n", "ab" * 32),
        (b"AB" * 32 + b"\n", "ab" * 32),
    ],
)
def test_checksum_files_in_sha256sum_format_or_bare(text, digest):
    assert assets.parse_checksum(text, "image.tar") == digest


def test_a_checksum_file_without_a_digest_is_refused():
    with pytest.raises(AssetError):
        assets.parse_checksum(b"not a digest", "image.tar")


def archive(path, manifest):
    with tarfile.open(path, "w") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_an_archive_may_only_name_the_apps_own_image(tmp_path):
    image = "127.0.0.1:5000/web"
    tags = assets.archive_tags(archive(tmp_path / "a.tar", [{"RepoTags": [f"{image}:v2"], "Config": "x"}]))
    assert tags == [f"{image}:v2"]
    assets.check_archive_tags(tags, image, "v2")
    assets.check_archive_tags([], image, "v2")
    with pytest.raises(AssetError) as caught:
        assets.check_archive_tags([f"{image}:v2", "nginx:latest"], image, "v2")
    assert str(caught.value) == f"the asset would also tag nginx:latest; only {image}:v2 is allowed"


def test_an_archive_may_not_carry_another_release_of_the_same_image():
    image = "127.0.0.1:5000/web"
    with pytest.raises(AssetError) as caught:  # it would poison a later rollback to v1
        assets.check_archive_tags([f"{image}:v2", f"{image}:v1"], image, "v2")
    assert str(caught.value) == f"the asset would also tag {image}:v1; only {image}:v2 is allowed"
    with pytest.raises(AssetError):
        assets.check_archive_tags([f"{image}:v1"], image, "v2")


def test_an_archive_with_several_images_or_none_is_refused(tmp_path):
    with pytest.raises(AssetError):
        assets.archive_tags(archive(tmp_path / "two.tar", [{"RepoTags": []}, {"RepoTags": []}]))
    (tmp_path / "plain.tar").write_bytes(b"not a tar")
    with pytest.raises(AssetError):
        assets.archive_tags(tmp_path / "plain.tar")


class RecordingDocker:
    def __init__(self, present):
        self.present = present
        self.pulls = []

    def has_image(self, reference):
        return reference in self.present

    def pull(self, release, auth=None):
        self.pulls.append(release.reference)
        return Release(tag=release.tag, image=release.image, digest="sha256:pulled")

    def ping(self):
        return "pong"


def test_the_preloaded_image_is_used_instead_of_a_pull():
    docker = RecordingDocker({"r/web:v2"})
    port = PreloadedImage(docker, "r/web:v2")
    assert port.pull(Release(tag="v2", image="r/web")) == Release(tag="v2", image="r/web", digest=None)
    assert port.pull(Release(tag="v1", image="r/web")).digest == "sha256:pulled"
    assert docker.pulls == ["r/web:v1"]
    assert port.ping() == "pong"
