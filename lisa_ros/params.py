"""The node's parameters: one table, used to declare them (with descriptions), to write config/lisa.yaml's
documentation and to check the launch file's arguments."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str


PARAMETERS = (
    Param("model", "lisa-tiny-rooms", "LISA checkpoint: an embedded model (lisa-tiny-rooms: small, trained on "
          "synthetic rooms), a hub id (official: xinlai/LISA-7B-v1, xinlai/LISA-13B-llama2-v1, …) or a local "
          "directory in the official layout"),
    Param("vision_tower", "", "CLIP vision tower (dir or hub id); empty: the checkpoint's config.vision_tower"),
    Param("device", "", "torch device, e.g. cuda, cuda:1, cpu; empty: cuda if available, else cpu"),
    Param("dtype", "auto", "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (float16 is "
          "used with quantization)"),
    Param("quantization", "none", "none | 4bit | 8bit (bitsandbytes, CUDA only; SAM stays unquantised)"),
    Param("adapter", "", "LoRA adapter directory (lisa-export --adapter-only) on top of model; empty: the base model. "
          "Settable at run time (ros2 param set /lisa adapter DIR): checked at once (a bad one is refused with the "
          "reason), switched between turns; a switch closes all sessions"),
    Param("max_new_tokens", 256, "longest reply in tokens"),
    Param("max_query_chars", 2000, "longer queries are refused with an error"),
    Param("image_topic", "/camera/image_raw", "camera topic"),
    Param("image_transport", "raw", "raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage)"),
    Param("max_image_pixels", 3840 * 2160, "camera frames and goal images over this many pixels (raw: height × "
          "width; compressed: the dimensions in its header) are refused before decoding, with an error naming both"),
    Param("max_compressed_bytes", 16 * 1024 * 1024, "compressed frames over this many bytes are refused unread"),
    Param("image_qos", "sensor_data", "sensor_data (best effort, depth 1) | reliable (depth 1)"),
    Param("depth_topic", "", "sensor_msgs/Image depth registered to the colour camera (16UC1 millimetres or 32FC1 "
          "metres); each answer then gets a 3-D target per mask; empty: no depth"),
    Param("camera_info_topic", "/camera/camera_info", "sensor_msgs/CameraInfo of the colour camera (with depth_topic)"),
    Param("depth_max_age_s", 0.1, "the depth frame used is the one closest in stamp to the colour frame, at most "
          "this far from it"),
    Param("query_topic", "lisa/query", "std_msgs/String: a one-shot question about the newest frame"),
    Param("reply_topic", "lisa/reply", "std_msgs/String: the reply text (or 'error: …')"),
    Param("mask_topic", "lisa/mask", "sensor_msgs/Image mono8 0/255: union of the reply's masks, header = frame's"),
    Param("overlay_topic", "lisa/overlay", "sensor_msgs/Image rgb8: masks drawn on the frame, only when subscribed"),
    Param("result_topic", "lisa/result", "lisa_interfaces/SegmentationResult: everything about one answer"),
    Param("target_topic", "lisa/target", "geometry_msgs/PointStamped: the first mask's 3-D point (only when valid)"),
    Param("markers_topic", "lisa/markers", "visualization_msgs/MarkerArray: a box and a label per mask, replaced on "
          "each answer"),
    Param("mask_cloud_topic", "lisa/mask_cloud", "sensor_msgs/PointCloud2: the masks' points (only when subscribed)"),
    Param("publish_overlay", True, "publish overlays (only ever when someone subscribes)"),
    Param("max_sessions", 8, "sessions kept at once; the least recently used is evicted beyond this"),
    Param("session_idle_timeout_s", 600.0, "a session unused this long is dropped"),
    Param("max_turns", 20, "turns per session; then the session must be reset"),
    Param("busy_policy", "queue", "queue | reject: what happens to a request while the model is busy"),
    Param("max_queue", 4, "with busy_policy=queue: requests that may wait behind the running one"),
    Param("preencode", True, "while idle, encode the newest camera frame (CLIP + SAM) so a query on it starts at the "
          "LLM; yields at once to a query"),
    Param("preencode_max_age_s", 2.0, "a query answers on the last pre-encoded frame while it is at most this old "
          "(the answer's header says which frame), else on the newest; 0: any age"),
    Param("max_follows", 2, "follows (lisa/follow goals) running at once; more are refused with the reason"),
    Param("follow_rate_hz", 15.0, "most updates per second of a follow whose goal gives no rate (0: every camera "
          "frame); frames that come while an update runs are dropped, never queued"),
    Param("follow_redecode_s", 1.0, "a follow re-decodes its stored [SEG] prompt with SAM at least this often "
          "(more often when the optical flow is unsure or something hides part of the target), budget permitting"),
    Param("follow_budget_share", 0.1, "a follow's compute per frame is held at most this share of what its answer "
          "cost (asking again on every frame): SAM re-decodes wait, the optical flow carries on; 0: no limit"),
    Param("follow_requery", False, "when a followed target is lost, ask its question again on the newest frame (in "
          "the same session) and follow the new answer; a goal can also ask for this"),
    Param("follow_requery_s", 2.0, "while lost, a follow asks its question again at most this often"),
    Param("cpu_threads", 0, "torch CPU threads for inference (0: torch's default); fewer leaves cores to ROS"),
    Param("autostart", True, "configure and activate on start (loads the model); false: wait for lifecycle calls"),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics"),
)
DEFAULTS = {p.name: p.default for p in PARAMETERS}


def parameters_yaml() -> str:
    """``config/lisa.yaml``: every parameter with its description (regenerate: ``python -m lisa_ros.params``)."""
    lines = ["# Parameters of the LISA node (lisa-node / lisa.launch.py); made by `python -m lisa_ros.params`.",
             "# Keyed with /** so that it still matches after a namespace remap.", "/**:", "  ros__parameters:"]
    for p in PARAMETERS:
        value = f'"{p.default}"' if isinstance(p.default, str) else str(p.default).lower() if isinstance(
            p.default, bool) else p.default
        lines += [f"    # {p.description}", f"    {p.name}: {value}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(parameters_yaml(), end="")
