"""`push_to_hub`: upload the learned embedding to the Hugging Face hub after training."""

from __future__ import annotations

from pathlib import Path


class HubUploadError(RuntimeError):
    """Training succeeded but the upload did not; the message says where the embedding is."""


def push_embedding(embedding: Path, repo_id: str, token: str | None = None) -> str:
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_file(path_or_fileobj=str(embedding), path_in_repo=embedding.name, repo_id=repo_id)
    except Exception as err:
        raise HubUploadError(
            f"training finished, but the upload to the hub repo {repo_id!r} failed ({type(err).__name__}: "
            f"{str(err)[:300]}). The embedding is saved at {embedding}; upload it later with "
            f"`huggingface-cli upload {repo_id} {embedding}`"
        ) from None
    return str(info)
