"""Download the NoctAct-HAR dataset and unpack it safely, ready for `nightact prepare`.

Two ways to get the zip:

* Kaggle's official client (``kagglehub``) when Kaggle credentials are configured and no URL was
  given: it handles authentication and Kaggle's own caching.
* Plain HTTP otherwise (the public download URL, or any mirror given with ``url``), through the
  resumable, verifying client in :mod:`nightact.sources.http_download`.

Either way the archive is unpacked by :mod:`nightact.sources.archives` into a hidden temporary
folder that is renamed to ``DEST/NAME`` only when complete and when :func:`find_class_folders` finds
the class folders in it, so a folder that exists under its final name is always whole. That makes
the job idempotent: a second run finds the folder and does nothing::

    DEST/
      NAME.zip              the archive (kept with ``keep_archive``)
      NAME/                 the extracted videos, NAME/.../<class name>/*.mp4
      NAME.download.json    the DownloadConfig and what was found, for the record
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from nightact.core import files
from nightact.core.videos import VIDEO_EXTENSIONS
from nightact.sources import archives, http_download
from nightact.sources.http_download import DownloadError

__all__ = [
    "DEFAULT_URL",
    "KAGGLE_HANDLE",
    "download_dataset",
    "DownloadConfig",
    "DownloadResult",
    "extract_archive",
    "fetch",
    "find_class_folders",
    "kaggle_credentials_configured",
]

log = logging.getLogger(__name__)

KAGGLE_HANDLE = "lakavathakshay/noctact-har"
DEFAULT_URL = f"https://www.kaggle.com/api/v1/datasets/download/{KAGGLE_HANDLE}"

_CREDENTIALS_HINT = (
    "Kaggle wants a signed-in account for this download: create an API token at "
    "https://www.kaggle.com/settings, then set KAGGLE_USERNAME and KAGGLE_KEY (or save kaggle.json "
    "in ~/.kaggle) and run `nightact download` again without --url; or pass --url to a mirror"
)


@dataclass
class DownloadConfig:
    """Where to put the dataset and where to get it from."""

    dest: str = "data"
    url: str | None = None  # None: Kaggle's client with credentials, else DEFAULT_URL
    sha256: str | None = None  # expected SHA-256 of the zip, checked when given
    name: str | None = None  # archive and folder name; default from the URL
    keep_archive: bool = False  # keep DEST/NAME.zip after a successful extraction
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    retries: int = 3  # resumes after a dropped connection within one run
    retry_seconds: float = 2.0  # wait before each resume
    timeout_seconds: float = 60.0  # socket timeout of each request
    progress: bool = True


@dataclass
class DownloadResult:
    """What a download left on disk and what it found there."""

    dest: Path
    dataset_root: Path  # the folder holding one sub-folder of videos per class
    class_counts: dict[str, int]  # class folder name -> videos directly inside it
    source: str  # the URL, or kaggle:HANDLE
    already_present: bool = False  # True when nothing was done because everything was there
    archive: Path | None = None  # the zip, when kept
    archive_sha256: str | None = None
    archive_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_videos(self) -> int:
        return sum(self.class_counts.values())

    def prepare_command(self, store: str | os.PathLike | None = None) -> str:
        """The `nightact prepare` command that turns these videos into a clip store."""
        store = Path(store) if store is not None else self.dest / "store"
        return f"nightact prepare {_quote(self.dataset_root)} {_quote(store)}"

    def table(self) -> str:
        """A readable summary: the class folders, their video counts and the next command."""
        width = max((len(name) for name in self.class_counts), default=5)
        lines = [
            f"{len(self.class_counts)} classes, {self.total_videos} videos in {self.dataset_root}"
        ]
        lines += [f"  {name:<{width}}  {count:>6}" for name, count in self.class_counts.items()]
        lines.append(f"next: {self.prepare_command()}")
        return "\n".join(lines)


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if any(character.isspace() for character in text) else text


def download_dataset(config: DownloadConfig) -> DownloadResult:
    """Download and extract the dataset into ``config.dest``; do nothing if it is already there.

    Raises :class:`DownloadError` naming the URL or file and the problem.
    """
    dest = Path(config.dest)
    dest.mkdir(parents=True, exist_ok=True)
    use_kaggle = config.url is None and kaggle_credentials_configured()
    url = config.url or DEFAULT_URL
    name = config.name or _name_from_url(url)
    final_folder = dest / name
    source = f"kaggle:{KAGGLE_HANDLE}" if use_kaggle else url
    archives.remove_stale_extractions(dest, name)

    if final_folder.is_dir():
        # Only a complete extraction is ever renamed to this name, so it is whole.
        dataset_root, class_counts = find_class_folders(final_folder, config.extensions)
        log.info("%s: already downloaded and extracted; nothing to do", final_folder)
        return DownloadResult(
            dest=dest,
            dataset_root=dataset_root,
            class_counts=class_counts,
            source=source,
            already_present=True,
            notes=["already downloaded and extracted; nothing to do"],
        )

    if use_kaggle:
        result = _download_with_kagglehub(config, dest, final_folder)
    else:
        result = _download_over_http(config, url, dest, name, final_folder)
    _write_record(dest / f"{name}.download.json", config, result)
    return result


def kaggle_credentials_configured() -> bool:
    """True when Kaggle's client would find credentials (environment or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (Path.home() / ".kaggle/access_token").is_file()


def _name_from_url(url: str) -> str:
    """``.../download/owner/noctact-har`` -> ``noctact-har``; ``.../clips.zip`` -> ``clips``."""
    last = PurePosixPath(urllib.parse.urlparse(url).path).name
    if last.lower().endswith(".zip"):
        last = last[: -len(".zip")]
    return last or "dataset"


# --- HTTP -------------------------------------------------------------------------------------


def fetch(url: str, archive: Path, config: DownloadConfig) -> Path:
    """Download ``url`` to ``archive`` (see :func:`nightact.sources.http_download.fetch`)."""
    return http_download.fetch(url, archive, config, access_hint=_CREDENTIALS_HINT)


def _download_over_http(
    config: DownloadConfig, url: str, dest: Path, name: str, final_folder: Path
) -> DownloadResult:
    archive = dest / f"{name}.zip"
    notes = []
    if archive.is_file():
        # Renamed into place only after its size and checksum were verified.
        log.info("%s: archive already downloaded; extracting it", archive)
        notes.append("archive already downloaded")
    else:
        fetch(url, archive, config)
    digest = files.sha256_of(archive)
    archive_bytes = archive.stat().st_size
    dataset_root, class_counts = extract_archive(archive, final_folder, config)
    if not config.keep_archive:
        archive.unlink()
    return DownloadResult(
        dest=dest,
        dataset_root=dataset_root,
        class_counts=class_counts,
        source=url,
        archive=archive if config.keep_archive else None,
        archive_sha256=digest,
        archive_bytes=archive_bytes,
        notes=notes,
    )


# --- extraction -------------------------------------------------------------------------------


def extract_archive(
    archive: Path, final_folder: Path, config: DownloadConfig
) -> tuple[Path, dict[str, int]]:
    """Extract ``archive`` safely to ``final_folder`` and find its class folders.

    Returns the folder holding the class folders and the number of videos in each.
    """

    def inspect(folder: Path):
        return folder, *find_class_folders(folder, config.extensions)

    temporary, dataset_root, class_counts = archives.extract_zip(
        archive, final_folder, inspect, progress=config.progress
    )
    return final_folder / dataset_root.relative_to(temporary), class_counts


def find_class_folders(
    root: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS
) -> tuple[Path, dict[str, int]]:
    """Find the folder, at any depth under ``root``, whose sub-folders hold the videos.

    The real archive unpacks to ``modified_videos/<class>/*.mp4``; a mirror may add or drop a
    level. The folder with the most sub-folders that directly contain videos wins (the shallowest
    on a tie). Returns it and ``{class folder name: video count}`` sorted by name, which is the
    label order `prepare` uses.
    """
    root = Path(root)
    wanted = {extension.lower() for extension in extensions}
    by_parent: dict[Path, dict[str, int]] = {}
    for folder, subfolders, names in os.walk(root):
        # Skip hidden folders and the resource forks macOS adds to zips.
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".") and name != "__MACOSX"
        )
        videos = sum(
            1
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted
        )
        folder = Path(folder)
        if videos and folder != root:
            by_parent.setdefault(folder.parent, {})[folder.name] = videos
    if not by_parent:
        raise DownloadError(
            root,
            f"no class folders of videos ({', '.join(sorted(wanted))}) found; expected "
            "<class name>/*.mp4 somewhere inside",
        )
    best = max(by_parent, key=lambda parent: (len(by_parent[parent]), -len(parent.parts)))
    return best, dict(sorted(by_parent[best].items()))


# --- Kaggle's client --------------------------------------------------------------------------


def _download_with_kagglehub(
    config: DownloadConfig, dest: Path, final_folder: Path
) -> DownloadResult:
    # Imported here: only this path needs it, and it pulls in a good deal.
    import kagglehub

    temporary = archives.temporary_folder(final_folder)
    source = f"kaggle:{KAGGLE_HANDLE}"
    try:
        try:
            kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(temporary))
        except Exception as error:
            # kagglehub raises requests', kagglesdk's and its own exception types; all of them
            # mean the same to the user: the download did not happen.
            message = str(error)
            if "401" in message or "403" in message:
                message += f". {_CREDENTIALS_HINT}"
            raise DownloadError(source, f"Kaggle download failed: {message}") from error
        dataset_root, class_counts = find_class_folders(temporary, config.extensions)
        os.replace(temporary, final_folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return DownloadResult(
        dest=dest,
        dataset_root=final_folder / dataset_root.relative_to(temporary),
        class_counts=class_counts,
        source=source,
    )


def _write_record(path: Path, config: DownloadConfig, result: DownloadResult) -> None:
    # The job's config and what it found, beside what it wrote, so the download is reproducible.
    record = {
        "config": asdict(config),
        "source": result.source,
        "archive_sha256": result.archive_sha256,
        "archive_bytes": result.archive_bytes,
        "dataset_root": str(result.dataset_root),
        "class_counts": result.class_counts,
    }
    files.write_json_atomic(path, record)
