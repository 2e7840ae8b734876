"""MotionDirector's aspect-ratio buckets (``sensible_buckets`` of its ``utils/bucketing.py``, on with
``use_bucketing: True`` in every published config): the size rule, whole frames without cropping, and training on
the non-square latents that result."""

import json

import numpy as np
import pytest
from PIL import Image

from gen4d import Gen4DError
from gen4d.data.videos import read_video
from gen4d.export.video import write_video
from gen4d.recipes.motion import (
    MotionTrainConfig,
    ValidationSettings,
    collect_clips,
    run_motion_train,
)
from gen4d.video.buckets import bucket_size
from gen4d.video.train import LoraSettings, load_clip_latents

pytestmark = pytest.mark.usefixtures("one_thread")

RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


# ----------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "configured, source, expected",
    [
        # landscape: width stays; height target 384 * 720 / 1280 = 216, buckets 384 - 64 = 320 and 384 - 128 = 256
        ((384, 384), (1280, 720), (384, 256)),
        # target 512 * 720 / 1280 = 288, buckets 448 / 384 (the config comment's "512x256" is not what the code does)
        ((512, 512), (1280, 720), (512, 384)),
        # portrait: height stays; width target 216 -> 256
        ((384, 384), (720, 1280), (256, 384)),
        # the 48 x 80 test video: target 384 * 48 / 80 = 230.4 -> 256; at 320: target 192, buckets 256 / 192 -> 192
        ((384, 384), (80, 48), (384, 256)),
        ((320, 320), (80, 48), (320, 192)),
        # at 256 both buckets (192, 128) are raised to 192
        ((256, 256), (80, 48), (256, 192)),
        # 576 x 320 (config_single_video_24.yaml): target 320 * 480 / 854 = 179.9, buckets 256 / 192 -> 192
        ((576, 320), (854, 480), (576, 192)),
        # portrait at 576 x 320: width target 576 * 480 / 854 = 323.7, buckets 512 / 448 -> 448
        ((576, 320), (480, 854), (448, 320)),
        # a tie (target 384 * 480 / 640 = 288, 32 from both buckets) goes to configured - 64
        ((384, 384), (640, 480), (384, 320)),
        # barely landscape still takes a bucket
        ((384, 384), (400, 384), (384, 320)),
        # square: the configured size
        ((384, 384), (500, 500), (384, 384)),
        ((576, 320), (64, 64), (576, 320)),
        # configured sides under the floor of 192 are kept
        ((32, 32), (48, 40), (32, 32)),
    ],
)
def test_bucket_size_is_motiondirectors_rule(configured, source, expected):
    assert bucket_size(*configured, *source) == expected


# ----------------------------------------------------------------------------------------------- no cropping
def _bordered_frames(n=3, height=48, width=80, band=2):
    """Grey frames with a red band at the far left, a blue band at the far right and a per-frame grey level."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = GREY
        frames[i, :, :band] = RED
        frames[i, :, -band:] = BLUE
        frames[i, height // 2 - 4 : height // 2 + 4, width // 2 - 4 : width // 2 + 4] = 40 * i
    return frames


def _frame_folder(path, frames):
    path.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"frame_{i + 1:04d}.png")
    return path


def _cfg(source, **kw):
    return MotionTrainConfig(input=str(source), prompt="a clip", num_frames=3, **kw)


def _colour(column):
    """Mean RGB of a ``[3, H]`` column, 0-255."""
    return (column.mean(dim=1) * 255).tolist()


def test_non_square_frames_keep_the_bucket_aspect_and_both_edges(tmp_path):
    folder = _frame_folder(tmp_path / "frames", _bordered_frames())
    for side, (h, w) in ((384, (256, 384)), (320, (192, 320)), (256, (192, 256))):
        (clip,) = collect_clips(_cfg(folder, height=side, width=side))
        assert clip.pixels.shape == (3, 3, h, w), side
        for frame in clip.pixels:
            # the outermost columns are the source's outermost columns: nothing was cut at either side
            assert np.allclose(_colour(frame[:, :, 0]), RED, atol=2), side
            assert np.allclose(_colour(frame[:, :, -1]), BLUE, atol=2), side

    # the former behaviour (scale to cover, keep the centre) loses both bands: what the bucket test guards against
    (cropped,) = collect_clips(_cfg(folder, height=384, width=384, resize="crop"))
    assert cropped.pixels.shape == (3, 3, 384, 384)
    assert np.allclose(_colour(cropped.pixels[0, :, :, 0]), GREY, atol=2)
    assert np.allclose(_colour(cropped.pixels[0, :, :, -1]), GREY, atol=2)
    # use_bucketing: False resizes to exactly width x height, also without cutting
    (stretched,) = collect_clips(_cfg(folder, height=384, width=384, resize="stretch"))
    assert stretched.pixels.shape == (3, 3, 384, 384)
    assert np.allclose(_colour(stretched.pixels[0, :, :, 0]), RED, atol=2)

    # portrait source (the frames turned a quarter): the height stays, the width is the bucket
    portrait = _frame_folder(tmp_path / "portrait", np.ascontiguousarray(_bordered_frames().transpose(0, 2, 1, 3)))
    (clip,) = collect_clips(_cfg(portrait, height=384, width=384))
    assert clip.pixels.shape == (3, 3, 384, 256)
    assert np.allclose(_colour(clip.pixels[0, :, 0, :]), RED, atol=2)  # red is now the top row
    assert np.allclose(_colour(clip.pixels[0, :, -1, :]), BLUE, atol=2)

    # images (mode=images) are bucketed the same way
    Image.fromarray(_bordered_frames(1)[0]).save(tmp_path / "still.png")
    (image,) = collect_clips(_cfg(tmp_path / "still.png", height=320, width=320, mode="images"))
    assert image.pixels.shape == (1, 3, 192, 320)
    assert np.allclose(_colour(image.pixels[0, :, :, 0]), RED, atol=2)

    with pytest.raises(Gen4DError, match="resize must be one of"):
        collect_clips(_cfg(folder, resize="pad"))


# ----------------------------------------------------------------------------------------------- training
def test_training_on_non_square_latents(t2v_dir, tmp_path):
    """An 80 x 48 video at 256 x 256 trains at its bucket, 256 x 192: latents [4, F, 24, 32] in the cache, both
    paths train on them, and a preview with the noise prior inverts the non-square latent and samples 256 x 256."""
    video = tmp_path / "wide.mp4"
    frames = _bordered_frames(n=4, band=4)
    for i in range(4):  # something that moves
        frames[i, 10:20, 10 + 8 * i : 20 + 8 * i] = (230, 120, 30)
    write_video(video, frames, fps=8)
    cfg = MotionTrainConfig(
        input=str(video), prompt="an orange square slides right", model=str(t2v_dir), num_frames=2, height=256,
        width=256, steps=2, checkpoint_every=0, gradient_checkpointing=False, lora=LoraSettings(rank=4),
        validation=ValidationSettings(every=2, steps=2, noise_prior=0.5),
    )
    metrics = run_motion_train(cfg, tmp_path / "run", quiet=True)
    assert metrics["clip_sizes"] == [[192, 256], [192, 256]] and metrics["resize"] == "bucket"
    for i in range(2):
        latents, _, meta = load_clip_latents(tmp_path / "run" / "stages" / "latents" / f"clip_{i:04d}.safetensors")
        assert latents.shape == (4, 2, 24, 32)  # [C, F, 192 / 8, 256 / 8]
        assert (meta["height"], meta["width"]) == (192, 256)
    assert all(v is not None and np.isfinite(v) and v > 0 for v in metrics["losses"]["temporal"])
    assert all(v is None or (np.isfinite(v) and v > 0) for v in metrics["losses"]["spatial"])  # None: path skipped
    config = json.loads((tmp_path / "run" / "lora" / "lora_config.json").read_text())
    assert config["clip_sizes"] == [[192, 256], [192, 256]] and (config["height"], config["width"]) == (256, 256)
    previews = list((tmp_path / "run" / "stages" / "motion" / "preview").glob("step_000002_*.mp4"))
    assert len(previews) == 1
    assert read_video(previews[0]).shape == (2, 256, 256, 3)  # sampled at the configured size
