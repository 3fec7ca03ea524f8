"""``lisa-node``: the LISA lifecycle node — a thin adapter between ROS messages and ``lisa_core``.

configure: topics, action and services are created; activate: the model is loaded; deactivate: it is freed (GPU
memory included); with ``autostart`` (default) the node brings itself to active. Image callbacks only store the newest
frame; inference runs on one worker thread (``lisa_core.serving.InferenceQueue``). The ``adapter`` parameter (a LoRA
adapter directory, empty = the base model) is checked when set and switched on that thread, between turns.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import itertools
import signal
import sys
import queue
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lisa_interfaces.action import Converse, Follow
from lisa_interfaces.msg import Latency, SegmentationResult, SessionInfo
from lisa_interfaces.srv import ListSessions, ResetSession
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.task import Future as RosFuture
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from geometry_msgs.msg import PointStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from lisa_core.adapters import AdapterError, read_adapter
from lisa_core.engine import LisaResult
from lisa_core.follow import (ANSWER, DURATION_REACHED, FollowConfig, FollowOptions, Follower, FollowRun,
                              FollowUpdate, ask_again)
from lisa_core.geometry import DepthError, Pinhole, Target3D, centroid, mask_points, mask_target
from lisa_core.output import overlay
from lisa_core.serving import (Cancelled, DepthFrames, InferenceQueue, LatestFrame, PreEncoder, ServingError,
                               SessionStore, TurnRequest, run_turn)

from . import spatial
from .dds import REQUESTS
from .images import (ImageDecodeError, RefusedFrame, check_frame_size, depth_image_to_metres, numpy_to_image_msg,
                     to_rgb)
from .params import PARAMETERS

REPLIES_DEPTH = 1000  # lisa/reply (short strings)
RESULTS_DEPTH = 100  # lisa/result and lisa/mask carry masks: deep enough for a burst's answers, bounded in memory
# A finished goal (its image and masks) is kept this long for a late get_result; clients ask for it on acceptance.
ACTION_RESULT_KEPT_S = 5


class LisaNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("lisa", **kwargs)
        for p in PARAMETERS:
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        self.lisa = None
        self.load_error = "model not loaded: the node is not active"
        self.frames = LatestFrame()
        self.preencoder: PreEncoder | None = None
        self.depth_frames = DepthFrames()
        self.camera_info: CameraInfo | None = None
        self.depth_status = "off: no depth_topic"
        self.sessions: SessionStore | None = None
        self.queue: InferenceQueue | None = None
        self.last_latency_s = float("nan")
        self.served = self.served_at_trim = 0
        self.frame_age_max_ms = float("-inf")  # worst image-callback delay since the last diagnostics message
        self.frames_refused = 0  # camera frames over max_image_pixels / max_compressed_bytes
        self.queries_lost = 0  # queries DDS dropped unread (message-lost events)
        self._entities = []
        self.follows: dict[int, FollowRun] = {}  # running lisa/follow goals by id
        self._follow_ids = itertools.count(1)
        self.follow_slots = 0  # follows running or starting (bounded by max_follows)
        self.adapter_path = ""  # the adapter the model runs with now ("": the base model); the parameter may be ahead
        self.adapter_error = ""  # why the adapter last asked for is not the one running
        self._adapter_request = 0  # counts accepted changes of the parameter: only the latest one is switched to
        self._reverting = False
        self.add_on_set_parameters_callback(self.on_set_parameters)
        if self.param("autostart"):
            self.trigger_configure()
            self.trigger_activate()

    def param(self, name: str):
        return self.get_parameter(name).value

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        self.sessions = SessionStore(self.param("max_sessions"), self.param("session_idle_timeout_s"),
                                     self.param("max_turns"))
        self.queue = InferenceQueue(0 if self.param("busy_policy") == "reject" else self.param("max_queue"))
        qos = qos_profile_sensor_data if self.param("image_qos") == "sensor_data" else QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE)
        image_type = CompressedImage if self.param("image_transport") == "compressed" else Image
        self.reply_pub = self.create_publisher(String, self.param("reply_topic"), REPLIES_DEPTH)
        self.mask_pub = self.create_publisher(Image, self.param("mask_topic"), RESULTS_DEPTH)
        self.overlay_pub = self.create_publisher(Image, self.param("overlay_topic"), 10)
        self.result_pub = self.create_publisher(SegmentationResult, self.param("result_topic"), RESULTS_DEPTH)
        self.target_pub = self.create_publisher(PointStamped, self.param("target_topic"), 10)
        self.markers_pub = self.create_publisher(MarkerArray, self.param("markers_topic"), 10)
        self.cloud_pub = self.create_publisher(PointCloud2, self.param("mask_cloud_topic"), 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities = [
            self.reply_pub, self.mask_pub, self.overlay_pub, self.result_pub, self.target_pub, self.markers_pub,
            self.cloud_pub, self.diag_pub,
            self.create_subscription(image_type, self.param("image_topic"), self.on_image, qos),
            self.create_subscription(String, self.param("query_topic"), self.on_query, REQUESTS,
                                     event_callbacks=SubscriptionEventCallbacks(message_lost=self.on_queries_lost)),
            self.create_service(ResetSession, "lisa/reset_session", self.on_reset, qos_profile=REQUESTS),
            self.create_service(ListSessions, "lisa/list_sessions", self.on_list, qos_profile=REQUESTS),
            self.create_timer(self.param("diagnostics_period_s"), self.publish_diagnostics),
        ]
        if self.param("depth_topic"):
            self.depth_status = "waiting for depth"
            self._entities += [
                self.create_subscription(Image, self.param("depth_topic"), self.on_depth, qos),
                self.create_subscription(CameraInfo, self.param("camera_info_topic"), self.on_camera_info, qos)]
        self._completions = queue.SimpleQueue()
        self._wake = self.create_guard_condition(self.deliver_completions)
        self._entities.append(self._wake)
        self.action_server = ActionServer(
            self, Converse, "lisa/converse", self.execute_turn, goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT, goal_service_qos_profile=REQUESTS,
            result_service_qos_profile=REQUESTS, cancel_service_qos_profile=REQUESTS,
            result_timeout=ACTION_RESULT_KEPT_S)
        self.follow_server = ActionServer(
            self, Follow, "lisa/follow", self.execute_follow, goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT, goal_service_qos_profile=REQUESTS,
            result_service_qos_profile=REQUESTS, cancel_service_qos_profile=REQUESTS,
            result_timeout=ACTION_RESULT_KEPT_S)
        self.get_logger().info(f"configured: camera '{self.param('image_topic')}' ({image_type.__name__}), "
                               f"queries on '{self.param('query_topic')}', actions 'lisa/converse', 'lisa/follow'")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        from lisa_core import Lisa

        quantization = self.param("quantization")
        if self.param("cpu_threads") > 0:
            import torch

            torch.set_num_threads(self.param("cpu_threads"))
        self.get_logger().info(f"loading {self.param('model')} …")
        try:
            self.lisa = Lisa.from_pretrained(
                self.param("model"), vision_tower=self.param("vision_tower") or None,
                device=self.param("device") or None, dtype=self.param("dtype"),
                quantization=None if quantization in ("", "none") else quantization)
        except Exception as err:  # the node stays up and reports this on every request
            self.load_error = f"model failed to load: {err}"
            self.get_logger().error(self.load_error)
            return TransitionCallbackReturn.FAILURE
        self.load_error = ""
        self.adapter_path = ""
        if self.param("adapter"):
            try:
                self.apply_adapter(self.param("adapter"))
            except Exception as err:  # serve the base model rather than nothing, and say so
                self.adapter_error = f"the adapter failed to load: {err}; serving the base model"
                self.get_logger().error(self.adapter_error)
                self.set_adapter_param("")
        if self.param("preencode"):
            self.preencoder = PreEncoder(self.lisa, self.frames, self.queue, self.decode_image,
                                         self.param("preencode_max_age_s"))
        gc.collect()
        gc.freeze()  # the model's many long-lived objects out of the collector's way: no GC pauses on callbacks
        self.get_logger().info(f"active: {self.param('model')} on {self.lisa.device} ({self.lisa.dtype}), "
                               f"{self.describe_adapter()}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.release_model("model unloaded: the node is inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.release_model("shutting down")
        self.destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def release_model(self, reason: str) -> None:
        for run in list(self.follows.values()):
            run.stop(reason)
        self.lisa, self.load_error, self.adapter_path, self.preencoder = None, reason, "", None
        if self.sessions is not None:
            self.sessions.clear(reason)
        gc.unfreeze()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def destroy_entities(self) -> None:
        for entity in self._entities:
            entity.destroy()
        self._entities = []
        for name in ("action_server", "follow_server"):
            if getattr(self, name, None) is not None:
                getattr(self, name).destroy()
                setattr(self, name, None)
        if self.queue is not None:
            self.queue.shutdown()

    # ---------------------------------------------------------------- adapters
    def on_set_parameters(self, params) -> SetParametersResult:
        """A new ``adapter`` is checked here against the loaded model (files, names, shapes): a bad one is refused
        with the reason and nothing changes. A good one is switched to on the inference thread, after the turns
        already queued; while the node is inactive it is loaded at activation."""
        for param in params:
            if param.name != "adapter" or self._reverting:
                continue
            path = param.value
            try:
                if not isinstance(path, str):
                    raise AdapterError(f"adapter must be a directory path (a string), got {path!r}")
                if path and self.lisa is not None:
                    self.lisa.check_adapter(path)
                elif path:
                    read_adapter(path)
            except Exception as err:  # AdapterError, or anything unforeseen: refused either way, the node stays up
                self.get_logger().error(f"adapter refused, still serving {self.describe_adapter()}: {err}")
                return SetParametersResult(successful=False, reason=str(err))
            self._adapter_request += 1
            if self.lisa is not None:
                request = self._adapter_request
                self.queue.submit(lambda path=path, request=request: self.switch_adapter(path, request), force=True)
                self.get_logger().info(f"adapter '{path}' accepted: switching after the queued turns"
                                       if path else "switching to the base model after the queued turns")
        return SetParametersResult(successful=True)

    def switch_adapter(self, path: str, request: int) -> None:
        """On the inference thread, between turns."""
        if request != self._adapter_request or self.lisa is None:
            return  # a newer change comes behind this one, or the model is gone (activation loads the parameter)
        try:
            self.apply_adapter(path)
        except Exception as err:  # e.g. unreadable after the check: keep the adapter that runs, and say so
            self.adapter_error = f"adapter '{path}' failed to load: {err}; still serving {self.describe_adapter()}"
            self.get_logger().error(self.adapter_error)

            def revert():
                if request == self._adapter_request:  # nothing newer was asked for: the parameter shows what runs
                    self.set_adapter_param(self.adapter_path)

            self.call_on_executor(revert)

    def apply_adapter(self, path: str) -> None:
        """Run the model with the adapter at ``path`` ("": the base model), keeping only that one loaded; a change of
        weights closes every session (their KV caches belong to the old ones). On error nothing changed."""
        lisa = self.lisa
        version = lisa.weights_version
        lisa.set_adapter(lisa.load_adapter(path) if path else None)
        for name in list(lisa.adapters):
            if name != lisa.active_adapter:
                lisa.delete_adapter(name)
        self.adapter_path, self.adapter_error = path, ""
        if lisa.weights_version != version:
            closed = self.sessions.clear(f"the model switched to {self.describe_adapter()}")
            self.get_logger().info(f"now serving {self.describe_adapter()} ({closed} session(s) closed)")

    def describe_adapter(self) -> str:
        return f"adapter '{self.adapter_path}'" if self.adapter_path else "the base model"

    def set_adapter_param(self, value: str) -> None:
        """Make the parameter show what runs (no switch is triggered)."""
        self._reverting = True
        try:
            self.set_parameters([Parameter("adapter", Parameter.Type.STRING, value)])
        finally:
            self._reverting = False

    # ---------------------------------------------------------------- inputs
    def on_image(self, msg) -> None:
        header, frame = msg.header, msg
        try:
            check_frame_size(msg, self.param("max_image_pixels"), self.param("max_compressed_bytes"))
        except ImageDecodeError as err:  # keep why, not the message: a query on this frame gets the reason
            self.frames_refused += 1
            self.get_logger().warning(f"camera frame refused: {err}", throttle_duration_sec=5.0)
            frame = RefusedFrame(str(err))
        self.frames.put(frame, header)
        if self.preencoder is not None:
            self.preencoder.poke()
        for run in list(self.follows.values()):
            run.poke()
        age_ms = (time.time_ns() - (header.stamp.sec * 10**9 + header.stamp.nanosec)) / 1e6  # meaningful on one clock
        self.frame_age_max_ms = max(self.frame_age_max_ms, age_ms)

    def on_queries_lost(self, info) -> None:
        """DDS dropped queries before the node saw them (a full history): counted for /diagnostics."""
        self.queries_lost += info.total_count_change
        self.get_logger().warning(f"{info.total_count_change} queries lost in DDS before the node could read them",
                                  throttle_duration_sec=5.0)

    def on_depth(self, msg: Image) -> None:
        self.depth_frames.put(msg, msg.header, stamp_s(msg.header))

    def on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def on_query(self, msg: String, info) -> None:
        received = time.perf_counter()
        text = msg.data
        gid = info.get("publisher_gid")  # each publisher its own share of the queue
        refuse = functools.partial(self.publish_error, text, Header(), received=received)
        try:
            self.check_request(text)
            self.queue.submit(lambda: self.serve_query(text, received), source=("topic", gid and bytes(gid["data"])),
                              refused=lambda busy: refuse(str(busy)))
        except ServingError as err:
            refuse(str(err))

    def decode_image(self, msg):
        """A camera frame or goal image → RGB, within ``max_image_pixels`` / ``max_compressed_bytes``."""
        return to_rgb(msg, self.param("max_image_pixels"), self.param("max_compressed_bytes"))

    def check_request(self, text: str) -> None:
        if self.lisa is None:
            raise ServingError(self.load_error)
        if not text.strip():
            raise ServingError("query is empty")
        if len(text) > self.param("max_query_chars"):
            raise ServingError(f"query is {len(text)} characters, over max_query_chars "
                               f"({self.param('max_query_chars')})")

    def latest_frame(self, lisa):
        """(``ImageState``, header) of the frame to answer on with ``lisa``: the pre-encoded one when a query may use
        it (``preencode_max_age_s``), else the newest (with what is already encoded of it)."""
        frame = self.frames.get()
        preencoder = self.preencoder
        if preencoder is not None and preencoder.lisa is lisa:
            ready = preencoder.ready()
            if ready is not None:
                return ready[1], ready[0].meta
            partial = preencoder.state_for(frame)
            if partial is not None:
                return partial, frame.meta
        try:
            return lisa.image_state(self.decode_image(frame.raw)), frame.meta
        except ImageDecodeError as err:
            raise ServingError(f"newest camera frame is unusable: {err}") from err

    # ---------------------------------------------------------------- one-shot queries
    def serve_query(self, text: str, received: float) -> None:
        started = time.perf_counter()
        header = Header()
        lisa = self.lisa  # this answer's model, even if the node deactivates meanwhile
        try:
            if lisa is None:  # deactivated while this query waited
                raise ServingError(self.load_error)
            state, header = self.latest_frame(lisa)
            image = state.image
            result = lisa.session(state).chat(text, max_new_tokens=self.param("max_new_tokens"))
        except (ServingError, ValueError) as err:
            self.publish_error(text, header, str(err), received)
            return
        except Exception as err:  # never let one request take the node down
            self.get_logger().error(f"query failed: {err!r}")
            self.publish_error(text, header, f"internal error: {err}", received)
            return
        msg = self.result_msg(text, header, result, image, "", started - received, received)
        self.publish_outputs(msg, image, result, self.locate(header, result.masks))

    # ---------------------------------------------------------------- sessions (action)
    async def execute_turn(self, goal_handle):
        """A coroutine: it waits for its job without holding the (single-threaded) executor."""
        received = time.perf_counter()
        goal = goal_handle.request
        feedback = Converse.Feedback(stage="queued")
        goal_handle.publish_feedback(feedback)
        done = RosFuture()
        outcome = {}

        def on_token(token_id: int, text: str):
            if goal_handle.is_cancel_requested:
                raise Cancelled()
            feedback.stage, feedback.partial_text = "generating", text
            feedback.tokens += 1
            goal_handle.publish_feedback(feedback)

        def job():
            started = time.perf_counter()
            header = goal.image.header
            lisa = self.lisa  # this turn's model, even if the node deactivates meanwhile
            try:
                if goal_handle.is_cancel_requested:
                    raise Cancelled()
                self.check_request(goal.text)
                image = self.decode_image(goal.image) if goal.image.width else None
                request = TurnRequest(goal.text, goal.session_id, image, goal.image.header, goal.reset,
                                      goal.max_new_tokens or self.param("max_new_tokens"))
                feedback.stage = "encoding"
                goal_handle.publish_feedback(feedback)
                entry, result = run_turn(lisa, self.sessions, request, lambda: self.latest_frame(lisa),
                                         on_token)
                source = image if image is not None else entry.session.state.image
                msg = self.result_msg(goal.text, entry.frame_meta, result, source, entry.session_id,
                                      started - received, received)
                self.publish_outputs(msg, source, result, self.locate(entry.frame_meta, result.masks, entry))
                outcome["msg"] = msg
            except Cancelled:
                outcome["cancelled"] = True
            except (ServingError, ImageDecodeError, ValueError) as err:
                outcome["error"] = str(err)
            except Exception as err:
                self.get_logger().error(f"turn failed: {err!r}")
                outcome["error"] = f"internal error: {err}"
            finally:
                outcome.setdefault("header", header)
                self.complete(done, None)

        def refuse(err: ServingError):
            outcome["error"], outcome["header"] = str(err), goal.image.header
            done.set_result(None)

        try:  # a session's turns share its share of the queue; new sessions share one
            self.queue.submit(job, source=("session", goal.session_id), refused=refuse)
        except ServingError as err:
            refuse(err)
        await done
        if "msg" in outcome:
            goal_handle.succeed()
            return Converse.Result(result=outcome["msg"])
        error = "cancelled" if outcome.get("cancelled") else outcome["error"]
        msg = SegmentationResult(header=outcome["header"], query=goal.text, session_id=goal.session_id, error=error)
        msg.latency.total_s = time.perf_counter() - received
        if outcome.get("cancelled"):
            goal_handle.canceled()
        else:
            self.get_logger().warning(f"turn refused: {error}")
            goal_handle.abort()
        return Converse.Result(result=msg)

    # ---------------------------------------------------------------- follows (action)
    async def execute_follow(self, goal_handle):
        """A coroutine, like ``execute_turn``: the answer to follow is made (or taken from the session) on the
        inference thread, then a ``FollowRun`` sends an update per camera frame until it ends."""
        received = time.perf_counter()
        goal = goal_handle.request
        if self.follow_slots >= self.param("max_follows"):
            return self.end_follow(goal_handle, f"busy: {self.follow_slots} follows running or starting "
                                                f"(max_follows {self.param('max_follows')})", goal.text)
        self.follow_slots += 1
        try:
            return await self.start_follow(goal_handle, goal, received)
        finally:
            self.follow_slots -= 1

    async def start_follow(self, goal_handle, goal, received: float):
        done, begun = RosFuture(), {}

        def begin():
            lisa = self.lisa  # this follow's model
            try:
                begun.update(self.answer_to_follow(lisa, goal, received))
            except (ServingError, ImageDecodeError, ValueError) as err:
                begun["error"] = str(err)
            except Exception as err:
                self.get_logger().error(f"follow failed to start: {err!r}")
                begun["error"] = f"internal error: {err}"
            finally:
                self.complete(done, None)

        def refuse(err: ServingError):
            begun["error"] = str(err)
            done.set_result(None)

        try:
            self.queue.submit(begin, source=("session", goal.session_id), refused=refuse)
        except ServingError as err:
            refuse(err)
        await done
        if "error" in begun:
            return self.end_follow(goal_handle, begun["error"], goal.text)
        return await self.run_follow(goal_handle, goal, **begun)

    def answer_to_follow(self, lisa, goal, received: float) -> dict:
        """On the inference thread: the goal's question answered (published like any answer), or its session's last
        answer → what ``run_follow`` needs."""
        started = time.perf_counter()
        if goal.text:
            self.check_request(goal.text)
            request = TurnRequest(goal.text, goal.session_id, max_new_tokens=self.param("max_new_tokens"))
            entry, answer = run_turn(lisa, self.sessions, request, lambda: self.latest_frame(lisa))
            question = goal.text
        else:
            if lisa is None:
                raise ServingError(self.load_error)
            if not goal.session_id:
                raise ServingError("nothing to follow: give a question (text) or the session_id of an answer")
            entry = self.sessions.get(goal.session_id)
            answer = entry.session.last_result
            if answer is None:
                raise ServingError(f"nothing to follow: session '{goal.session_id}' has not answered yet")
            question = entry.session.turns[-1][0]
        image = entry.session.state.image
        msg = self.result_msg(question, entry.frame_meta, answer, image, entry.session_id, started - received,
                              received)
        if goal.text:
            self.publish_outputs(msg, image, answer, self.locate(entry.frame_meta, answer.masks, entry))
        if not answer.masks:
            raise ServingError(f"nothing to follow: the answer has no mask ('{answer.text}')")
        follower = Follower(lisa, answer, image, goal.mask_index,
                            FollowConfig(redecode_s=self.param("follow_redecode_s"),
                                         budget_share=self.param("follow_budget_share")))
        return {"entry": entry, "question": question, "msg": msg, "follower": follower}

    async def run_follow(self, goal_handle, goal, entry, question: str, msg, follower: Follower):
        follow_id, ended, sent = next(self._follow_ids), RosFuture(), itertools.count(1)
        namespace = f"lisa_follow_{follow_id}"
        latest = {"msg": msg}

        def on_update(update: FollowUpdate, frame) -> None:  # on the inference thread
            if goal_handle.is_cancel_requested:
                run.stop("cancelled")
                return
            self.publish_follow_update(goal_handle, update, frame.meta, entry.session_id, next(sent), question,
                                       namespace)

        def requery(frame, state):  # on the inference thread, as idle-time work
            lisa = follower.lisa
            if self.lisa is not lisa:
                raise ServingError(self.load_error or "the model changed")
            again = ask_again(entry.session, question, state, self.param("max_new_tokens"),
                              should_yield=lambda: self.queue.depth > 0)
            entry.session, entry.frame_meta, entry.depth = again, frame.meta, None
            answer = again.last_result
            latest["msg"] = self.result_msg(question, frame.meta, answer, state.image, entry.session_id, 0.0,
                                            time.perf_counter())
            self.publish_outputs(latest["msg"], state.image, answer, self.locate(frame.meta, answer.masks, entry))
            return answer

        rate = goal.rate_hz if goal.rate_hz > 0 else self.param("follow_rate_hz")
        wants_requery = goal.requery or self.param("follow_requery")
        options = FollowOptions(rate, max(0.0, goal.duration_s),
                                self.param("follow_requery_s") if wants_requery else None)
        run = FollowRun(follower, self.queue, self.frames, self.follow_frame_state(follower.lisa), on_update,
                        lambda reason: self.complete(ended, reason), options, requery)
        self.follows[follow_id] = run
        answer = follower_answer(follower, msg)
        self.publish_follow_update(goal_handle, answer, entry.frame_meta, entry.session_id, next(sent), question,
                                   namespace)
        watchdog = self.create_timer(0.05, lambda: run.stop("cancelled") if goal_handle.is_cancel_requested
                                     else run.check_end())
        try:
            reason = await ended
        finally:
            self.destroy_timer(watchdog)
            self.follows.pop(follow_id, None)
            self.markers_pub.publish(spatial.delete_markers(namespace))
        self.get_logger().info(f"follow {follow_id} of '{question[:60]}' ended: {reason} ({run.updates} updates)")
        return self.end_follow(goal_handle, reason, question, latest["msg"], run)

    def follow_frame_state(self, lisa):
        """Frame → its ``ImageState``, shared with the pre-encoder (what one encodes, the other reuses)."""
        preencoder = self.preencoder
        if preencoder is not None and preencoder.lisa is lisa:
            return preencoder.claim
        return lambda frame: lisa.image_state(self.decode_image(frame.raw))

    def publish_follow_update(self, goal_handle, update: FollowUpdate, header, session_id: str, number: int,
                              question: str, namespace: str) -> None:
        """Feedback, ``lisa/mask``, ``lisa/target``, ``lisa/markers`` (and the overlay when subscribed), all stamped
        with the source frame's header."""
        if update.lost:
            targets = [spatial.target_msg(Target3D.invalid("target lost"), header)]
            self.markers_pub.publish(spatial.delete_markers(namespace))
        else:
            targets, cloud = self.locate(header, [update.mask])
            if targets[0].valid:
                self.target_pub.publish(spatial.target_point(targets[0]))
                self.markers_pub.publish(spatial.markers(targets, question[:40], namespace, replace_all=False))
            if cloud is not None:
                self.cloud_pub.publish(cloud)
        goal_handle.publish_feedback(Follow.Feedback(
            header=header, session_id=session_id, update=number, tier=update.tier,
            confidence=float(update.confidence), mask_area=update.area, target=targets[0],
            compute_s=float(update.seconds)))
        self.mask_pub.publish(numpy_to_image_msg(update.mask.astype(np.uint8) * 255, header, Image))
        if self.param("publish_overlay") and self.overlay_pub.get_subscription_count() > 0 and not update.lost:
            frame = self.frames.newest()
            if frame is not None and frame.meta is header:
                image = self.decode_image(frame.raw)
                self.overlay_pub.publish(numpy_to_image_msg(overlay(image, [update.mask]), header, Image))

    def end_follow(self, goal_handle, reason: str, question: str, msg=None, run: FollowRun | None = None):
        result = Follow.Result(reason=reason, answer=msg or SegmentationResult(query=question, error=reason))
        if run is not None:
            result.updates, result.lost_updates = run.updates + 1, run.lost_updates
            result.requeries, result.frames_skipped = run.requeries, run.frames_skipped
        if reason == "cancelled":
            goal_handle.canceled()
        elif reason == DURATION_REACHED:
            goal_handle.succeed()
        else:
            self.get_logger().warning(f"follow ended: {reason}")
            goal_handle.abort()
        return result

    def complete(self, future: RosFuture, value) -> None:
        """Resolve ``future`` on the executor's thread (called from the inference thread)."""
        self.call_on_executor(lambda: future.set_result(value))

    def call_on_executor(self, function) -> None:
        """Run ``function()`` on the executor's thread (called from the inference thread)."""
        self._completions.put(function)
        self._wake.trigger()

    def deliver_completions(self) -> None:
        while not self._completions.empty():
            self._completions.get_nowait()()

    def on_reset(self, request, response):
        response.success = self.sessions.reset(request.session_id)
        response.message = "reset" if response.success else f"unknown session id '{request.session_id}'"
        return response

    def on_list(self, request, response):
        for info in self.sessions.info():
            item = SessionInfo(session_id=info["session_id"], turns=info["turns"], idle_s=float(info["idle_s"]))
            if info["frame_meta"] is not None:
                item.image_stamp = info["frame_meta"].stamp
            response.sessions.append(item)
        return response

    # ---------------------------------------------------------------- outputs
    def result_msg(self, query: str, header, result: LisaResult, image: np.ndarray, session_id: str,
                   queue_s: float, received: float) -> SegmentationResult:
        t = result.timings
        latency = Latency(queue_s=queue_s, clip_s=t.get("clip", 0.0), prefill_s=t.get("prefill", 0.0),
                          decode_s=t.get("decode", 0.0), sam_encode_s=t.get("sam_encode", 0.0),
                          mask_decode_s=t.get("mask_decode", 0.0), new_tokens=len(result.token_ids),
                          total_s=time.perf_counter() - received)
        masks = [numpy_to_image_msg(m.astype(np.uint8) * 255, header, Image) for m in result.masks]
        self.last_latency_s, self.served = latency.total_s, self.served + 1
        return SegmentationResult(header=header, query=query, reply=result.text, session_id=session_id,
                                  turn=result.turn, masks=masks, scores=result.scores,
                                  mask_areas=[int(m.sum()) for m in result.masks], latency=latency,
                                  adapter=self.adapter_path)

    # ---------------------------------------------------------------- 3-D targets
    def matched_depth(self, header, entry=None):
        """(depth in metres, colour camera, depth header) for the colour frame ``header``: the depth frame closest
        in stamp, kept with a session for its later turns. ``DepthError`` saying why there is none."""
        if entry is not None and entry.depth is not None:
            return entry.depth
        if not self.param("depth_topic"):
            raise DepthError(spatial.NO_DEPTH)
        if self.camera_info is None:
            raise DepthError(f"no camera info received yet on '{self.param('camera_info_topic')}'")
        frame = self.depth_frames.closest(stamp_s(header), self.param("depth_max_age_s"))
        info = self.camera_info
        try:
            matched = (depth_image_to_metres(frame.raw), Pinhole.from_k(info.k, info.width, info.height), frame.meta)
        except ImageDecodeError as err:
            raise DepthError(f"depth image unusable: {err}") from err
        if entry is not None:
            entry.depth = matched
        return matched

    def locate(self, header, masks, entry=None) -> tuple[list, PointCloud2 | None]:
        """Per mask its ``Target3D`` message (invalid, with the reason, when depth is missing or unusable) and, only
        while someone subscribes to it, the masks' point cloud."""
        if not masks:
            return [], None
        try:
            depth_m, camera, depth_header = self.matched_depth(header, entry)
            targets = [mask_target(m, depth_m, camera) for m in masks]
            points = (np.concatenate([mask_points(m, depth_m, camera) for m in masks])
                      if self.cloud_pub.get_subscription_count() > 0 else None)
            self.depth_status = "ok"
        except DepthError as err:  # bad or missing depth spoils the 3-D part of this answer only
            self.depth_status = str(err)
            targets, points, depth_header = [Target3D.invalid(str(err), centroid(m)) for m in masks], None, header
        stamped = Header(stamp=header.stamp, frame_id=depth_header.frame_id)
        return ([spatial.target_msg(t, stamped) for t in targets],
                spatial.cloud(points, stamped) if points is not None else None)

    def publish_outputs(self, msg: SegmentationResult, image: np.ndarray, result: LisaResult, located) -> None:
        msg.targets, cloud = located
        if msg.targets and msg.targets[0].valid:
            self.target_pub.publish(spatial.target_point(msg.targets[0]))
        if msg.targets:
            self.markers_pub.publish(spatial.markers(msg.targets, msg.query[:40]))
        if cloud is not None:
            self.cloud_pub.publish(cloud)
        union = result.union_mask(image.shape[:2]).astype(np.uint8) * 255
        self.mask_pub.publish(numpy_to_image_msg(union, msg.header, Image))
        if self.param("publish_overlay") and self.overlay_pub.get_subscription_count() > 0:
            self.overlay_pub.publish(numpy_to_image_msg(overlay(image, result.masks), msg.header, Image))
        self.result_pub.publish(msg)
        self.reply_pub.publish(String(data=msg.reply))
        self.get_logger().info(f"answered '{msg.query[:60]}': '{msg.reply[:80]}' ({len(msg.masks)} masks, "
                               f"{msg.latency.total_s:.2f} s)")

    def publish_error(self, query: str, header, error: str, received: float) -> None:
        self.get_logger().warning(f"query refused: {error}")
        msg = SegmentationResult(header=header, query=query, error=error)
        msg.latency.total_s = time.perf_counter() - received
        self.result_pub.publish(msg)
        self.reply_pub.publish(String(data=f"error: {error}"))

    def publish_diagnostics(self) -> None:
        if self.served != self.served_at_trim and self.queue is not None and self.queue.depth == 0:
            self.served_at_trim = self.served  # after answers, while idle: what they freed goes back to the OS
            gc.collect()  # (cycles holding frames — futures, goal handles — wait for a full collection otherwise)
            trim_freed_memory()
        level = DiagnosticStatus.OK if self.lisa is not None else DiagnosticStatus.ERROR
        if self.lisa is not None and self.adapter_error:
            level = DiagnosticStatus.WARN
        values = {
            "model": self.param("model"), "loaded": str(self.lisa is not None),
            "adapter": self.adapter_path, "adapter_error": self.adapter_error,
            "device": str(self.lisa.device) if self.lisa else "", "dtype": str(self.lisa.dtype) if self.lisa else "",
            "quantization": self.param("quantization"), "last_latency_s": f"{self.last_latency_s:.3f}",
            "queue_depth": str(self.queue.depth if self.queue else 0),
            "sessions": str(len(self.sessions) if self.sessions else 0), "served": str(self.served),
            "frames_received": str(self.frames.received), "frames_refused": str(self.frames_refused),
            "queries_lost": str(self.queries_lost),
            "error": self.load_error,
            "frame_age_max_ms": f"{self.frame_age_max_ms:.1f}",
            "depth": self.depth_status, "depth_frames_received": str(self.depth_frames.received),
            "camera_info": "received" if self.camera_info is not None else "none",
            "follows": f"{len(self.follows)} (max_follows {self.param('max_follows')})",
            **{f"follow {i}": describe_follow(run) for i, run in list(self.follows.items())},
            "preencoded": (f"{self.preencoder.encoded} encoded, {self.preencoder.yielded} yielded"
                           if self.preencoder is not None else "off"),
        }
        self.frame_age_max_ms = float("-inf")
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: LISA engine", hardware_id=values["device"],
                                  message=(self.adapter_error or "ready") if self.lisa is not None else
                                  self.load_error,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))


def follower_answer(follower: Follower, msg: SegmentationResult) -> FollowUpdate:
    """The followed answer as the follow's first update."""
    return FollowUpdate(follower.mask, ANSWER, 1.0, float("nan"), msg.latency.total_s)


def describe_follow(run: FollowRun) -> str:
    last = run.last
    state = f"{last.tier} (confidence {last.confidence:.2f}, {last.area} px)" if last else "starting"
    return (f"{state}; {run.updates} updates, {run.lost_updates} lost, {run.requeries} re-queries, "
            f"{run.frames_skipped} frames skipped" + (f"; re-query: {run.requery_error}" if run.requery_error else ""))


def stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


@functools.cache
def glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def give_large_blocks_back_to_the_os(threshold: int = 4 << 20) -> None:
    """glibc raises its mmap threshold after each large free, so that later camera-sized buffers (a 4K frame, its
    copies, masks) come from the heap and are never returned: a node's memory would stay at its highest. A fixed
    threshold keeps such blocks mmapped, and freeing them returns them at once."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def trim_freed_memory() -> None:
    """Hand the free pages of every malloc arena (one per thread that allocated) back to the OS."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def main(args=None) -> int:
    # The inference thread runs Python-heavy decode loops; a short GIL switch interval keeps the executor threads
    # (camera frames, queries, services) from waiting up to 5 ms per hand-over behind it.
    sys.setswitchinterval(0.0005)
    give_large_blocks_back_to_the_os()
    rclpy.init(args=sys.argv if args is None else args)
    node = LisaNode()
    # One executor thread: callbacks only store frames, enqueue work or answer from memory, and action goals are
    # coroutines that wait without holding it. (rclpy's MultiThreadedExecutor delayed image callbacks by up to
    # ~150 ms here; this one by ~1 ms.) Inference runs on the InferenceQueue's own thread.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():  # spin_once in a loop: plain spin() sometimes swallows SIGINT/SIGTERM
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A terminal's Ctrl-C reaches the node twice under ros2 launch (the process group's, then launch's own):
        # the second must not cut the release of the model short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.release_model("shutting down")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
