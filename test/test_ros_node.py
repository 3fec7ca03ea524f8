"""The LISA node over real DDS: a node subprocess on the tiny checkpoint, talked to over topics, the action and
services from this process. Each module run has its own ROS_DOMAIN_ID; every wait is bounded."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; make setup installs it")
pytest.importorskip("lisa_interfaces", reason="lisa_interfaces is not built; make setup builds it")

from action_msgs.msg import GoalStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lisa_interfaces.action import Converse  # noqa: E402
from lisa_interfaces.msg import SegmentationResult  # noqa: E402
from lisa_interfaces.srv import ListSessions, ResetSession  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from lisa_ros.client import LisaClient  # noqa: E402
from lisa_ros.dds import local_dds_env  # noqa: E402
from lisa_ros.process import start_node as start_process  # noqa: E402
from lisa_ros.process import stop_node  # noqa: E402

DOMAIN = 20 + os.getpid() % 70
ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Where can I wash my hands? Please output segmentation mask."


def start_node(log_path, namespace="", **params):
    return start_process(params, log_path, local_dds_env(DOMAIN), namespace)


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    os.environ.update(local_dds_env(DOMAIN))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def node(tiny_ckpt, tmp_path_factory, ros):
    log = tmp_path_factory.mktemp("node") / "node.log"
    process = start_node(log, model=str(tiny_ckpt), dtype="float32", device="cpu", max_new_tokens=8,
                         max_query_chars=2000, max_sessions=3)
    yield process, log
    stop_node(process)


@pytest.fixture(scope="module")
def client(node, ros):
    client = LisaClient(context=ros)
    client.results, client.masks, client.replies, client.diagnostics = [], [], [], []
    client.node.create_subscription(SegmentationResult, "lisa/result", client.results.append, 10)
    client.node.create_subscription(Image, "lisa/mask", client.masks.append, 10)
    client.node.create_subscription(String, "lisa/reply", client.replies.append, 10)
    client.node.create_subscription(DiagnosticArray, "/diagnostics", client.diagnostics.append, 10)
    client.query = client.node.create_publisher(String, "lisa/query", 10)
    client.wait_for_node(60)
    client.spin_until(lambda: client.query.get_subscription_count() > 0, 20, "the node's query subscription")
    client.spin_until(lambda: client.diagnostics, 20, "diagnostics (the node's publishers to match ours)")
    yield client
    client.close()


def ask(client, text, timeout=30.0):
    """Publish a query and wait for its result (re-publishing once if the first is lost at start-up)."""
    count = len(client.results)
    client.query.publish(String(data=text))
    try:
        client.spin_until(lambda: len(client.results) > count, timeout / 2, "a result")
    except TimeoutError:
        client.query.publish(String(data=text))
        client.spin_until(lambda: len(client.results) > count, timeout / 2, "a result")
    return client.results[-1]


def image_msg(client, rgb, stamp_sec):
    msg = client.image_msg(rgb)
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = stamp_sec, 123, "test_camera"
    return msg


def test_query_before_any_image(client):
    result = ask(client, QUESTION)
    assert "no camera image" in result.error and result.reply == "" and not result.masks
    client.spin_until(lambda: client.replies, 5, "the reply")
    assert client.replies[-1].data.startswith("error: no camera image")


def test_query_on_published_image(client, room_image):
    msg = image_msg(client, room_image, 1000)
    received = len(client.masks)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # best-effort camera QoS: publish until the node has a frame
        client.camera.publish(msg)
        client.executor.spin_once(timeout_sec=0.1)
        result = ask(client, QUESTION)
        if not result.error:
            break
    assert result.error == "" and result.reply
    assert (result.header.stamp.sec, result.header.stamp.nanosec, result.header.frame_id) == (1000, 123,
                                                                                            "test_camera")
    assert len(result.masks) == len(result.scores) == len(result.mask_areas) == result.reply.count("[SEG]")
    for mask, area in zip(result.masks, result.mask_areas):
        assert (mask.height, mask.width, mask.encoding) == (*room_image.shape[:2], "mono8")
        values = np.frombuffer(mask.data, np.uint8)
        assert set(np.unique(values)) <= {0, 255} and (values == 255).sum() == area
    client.spin_until(lambda: len(client.masks) > received, 5, "the union mask")
    union = client.masks[-1]
    assert union.header.stamp.sec == 1000 and (union.height, union.width) == room_image.shape[:2]
    client.spin_until(lambda: client.replies and client.replies[-1].data == result.reply, 5, "the same reply on lisa/reply")
    assert result.latency.total_s > 0 and result.latency.new_tokens == 8


def test_query_on_a_preencoded_frame_skips_the_encoders(client, room_image):
    """The node encodes the newest frame while idle: the question on it starts at the LLM."""
    def encoded():
        return int(wait_for_diagnostics(client, lambda v: True)["preencoded"].split()[0])

    before = encoded()
    msg = image_msg(client, room_image, 4000)
    deadline = time.monotonic() + 20
    while encoded() == before:
        assert time.monotonic() < deadline, "the node never pre-encoded the frame"
        client.camera.publish(msg)
    result = ask(client, QUESTION)
    assert result.error == "" and result.header.stamp.sec == 4000
    assert result.latency.clip_s == 0 and result.latency.sam_encode_s == 0 and result.latency.prefill_s > 0


def test_three_turn_session_reuses_the_image(client, room_image):
    first = client.converse(QUESTION, image=room_image, timeout=30)
    assert first.error == "" and first.turn == 1 and first.session_id
    assert first.latency.clip_s > 0
    turns = [client.converse(text, session_id=first.session_id, timeout=30)
             for text in ("And where can I sit?", "What else is in the room?")]
    assert [t.turn for t in turns] == [2, 3] and {t.session_id for t in turns} == {first.session_id}
    for turn in turns:
        assert turn.error == "" and turn.latency.clip_s == 0 and turn.latency.sam_encode_s == 0
        assert (turn.masks[0].height, turn.masks[0].width) == room_image.shape[:2] if turn.masks else True
    listed = call(client, ListSessions, "lisa/list_sessions", ListSessions.Request())
    assert any(s.session_id == first.session_id and s.turns == 3 for s in listed.sessions)


def call(client, srv_type, name, request, timeout=10):
    service = client.node.create_client(srv_type, name)
    client.spin_until(service.service_is_ready, timeout, f"service {name}")
    future = service.call_async(request)
    client.spin_until(future.done, timeout, f"the answer of {name}")
    return future.result()


def test_reset_session(client, room_image):
    opened = client.converse(QUESTION, image=room_image, timeout=30)
    answer = call(client, ResetSession, "lisa/reset_session", ResetSession.Request(session_id=opened.session_id))
    assert answer.success
    again = call(client, ResetSession, "lisa/reset_session", ResetSession.Request(session_id=opened.session_id))
    assert not again.success and "unknown session" in again.message
    after = client.converse("And now?", session_id=opened.session_id, timeout=30)
    assert "unknown session id" in after.error


def test_cancel(client, room_image):
    goal = Converse.Goal(text=QUESTION, image=client.image_msg(room_image), max_new_tokens=1500)
    feedback = []
    sent = client.action.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
    client.spin_until(sent.done, 20, "goal acceptance")
    handle = sent.result()
    client.spin_until(lambda: any(f.stage == "generating" for f in feedback), 20, "generation to start")
    cancel = handle.cancel_goal_async()
    client.spin_until(cancel.done, 10, "the cancel answer")
    result = handle.get_result_async()
    client.spin_until(result.done, 20, "the cancelled result")
    assert result.result().status == GoalStatus.STATUS_CANCELED
    assert result.result().result.result.error == "cancelled"
    assert max(f.tokens for f in feedback) < 1500


@pytest.mark.parametrize("case", ["empty", "huge", "encoding", "zero_size", "short_step", "short_data",
                                  "oversized", "unknown_session"])
def test_bad_input_gets_an_error(client, room_image, case):
    msg, text, session = client.image_msg(room_image[:20, :30].copy()), QUESTION, ""
    expected = {"empty": "query is empty", "huge": "max_query_chars", "encoding": "not accepted on the camera topic",
                "zero_size": "zero size", "short_step": "step", "short_data": "bytes",
                "oversized": "4000×3000 = 12000000 pixels, over max_image_pixels (8294400)",
                "unknown_session": "unknown session id"}[case]
    if case == "empty":
        text = "   "
    elif case == "huge":
        text = "where " * 2000
    elif case == "encoding":
        msg.encoding = "weird42"
    elif case == "zero_size":  # (width 0 means "no image: use the camera frame", so the height is 0)
        msg.height = 0
    elif case == "short_step":
        msg.step = msg.width * 3 - 1
    elif case == "short_data":
        msg.data = msg.data[: len(msg.data) // 2]
    elif case == "oversized":  # the header alone says 12 Mpx: refused before the (short) data is looked at
        msg.width, msg.height, msg.step = 4000, 3000, 12000
    elif case == "unknown_session":
        session = "no-such-session"
    goal = Converse.Goal(text=text, session_id=session, image=msg, max_new_tokens=4)
    result = send(client, goal)
    assert expected in result.error, result.error
    assert result.reply == "" and not result.masks


def send(client, goal, timeout=30):
    sent = client.action.send_goal_async(goal)
    client.spin_until(sent.done, timeout, "goal acceptance")
    result = sent.result().get_result_async()
    client.spin_until(result.done, timeout, "the result")
    return result.result().result.result


def test_oversized_camera_frame_is_refused_on_arrival_and_the_next_good_one_served(client, room_image):
    huge = image_msg(client, room_image, 1100)
    huge.width, huge.height, huge.step = 5000, 4000, 15000  # 20 Mpx by its header; the data is the small room's
    seen = int(wait_for_diagnostics(client, lambda v: True, node_name="/lisa")["frames_refused"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # best effort: publish until the node has counted it
        client.camera.publish(huge)
        values = wait_for_diagnostics(client, lambda v: True, node_name="/lisa")
        if int(values["frames_refused"]) > seen:
            break
    assert int(values["frames_refused"]) > seen
    result = ask(client, QUESTION)
    assert "newest camera frame is unusable" in result.error and "5000×4000 = 20000000 pixels" in result.error
    good = image_msg(client, room_image, 1101)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client.camera.publish(good)
        client.executor.spin_once(timeout_sec=0.1)
        result = ask(client, QUESTION)
        if not result.error:
            break
    assert result.error == "" and result.header.stamp.sec == 1101


def test_a_burst_of_100_goals_queries_and_service_calls_loses_none(client, room_image):
    """Every request of a burst far beyond max_queue gets its answer: a reply, or `busy` — none goes unanswered."""
    from rclpy.action import ActionClient

    from lisa_ros.dds import REQUESTS

    node = client.node
    goals = ActionClient(node, Converse, "lisa/converse", goal_service_qos_profile=REQUESTS,
                         result_service_qos_profile=REQUESTS, cancel_service_qos_profile=REQUESTS)
    lister = node.create_client(ListSessions, "lisa/list_sessions", qos_profile=REQUESTS)
    results = []
    node.create_subscription(SegmentationResult, "lisa/result", results.append, 1000)
    queries = node.create_publisher(String, "lisa/query", 1000)
    client.spin_until(lambda: goals.server_is_ready() and lister.service_is_ready()
                      and queries.get_subscription_count() > 0, 20, "the node's request endpoints")
    client.camera.publish(image_msg(client, room_image, 1200))
    texts = [f"burst {i}: {QUESTION}" for i in range(100)]
    bursts = [time.monotonic()]
    sent = [goals.send_goal_async(Converse.Goal(text=t, max_new_tokens=2)) for t in texts]
    bursts.append(time.monotonic())
    for text in texts:
        queries.publish(String(data=text))
    bursts.append(time.monotonic())
    calls = [lister.call_async(ListSessions.Request()) for _ in range(100)]
    bursts.append(time.monotonic())
    # goals and queries go out within ~0.1 s (100 answers take the node seconds); rclpy's call_async is slower
    # (~15 ms a call here): the calls arrive as fast as a client can make them
    assert max(np.diff(bursts)[:2]) < 0.5, np.diff(bursts)
    client.spin_until(lambda: all(f.done() for f in sent + calls), 60, "every goal's acceptance and every call")
    assert all(f.result().accepted for f in sent)
    answers = [f.result().get_result_async() for f in sent]
    client.spin_until(lambda: all(f.done() for f in answers), 120, "every goal's result")
    outcomes = [f.result().result.result for f in answers]
    assert all(o.reply or "busy" in o.error for o in outcomes), {o.error for o in outcomes}
    assert any(o.reply for o in outcomes) and any("busy" in o.error for o in outcomes)
    client.spin_until(lambda: len({r.query for r in results} & set(texts)) == 100, 60, "a result for each query")
    assert all(r.reply or "busy" in r.error for r in results if r.query in texts)
    values = wait_for_diagnostics(client, lambda v: True, node_name="/lisa")
    assert values["queries_lost"] == "0"


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def test_memory_is_given_back_after_a_burst_of_large_frames(client, node, room_image):
    process, _ = node
    session = client.converse(QUESTION, image=room_image, timeout=60).session_id
    huge = np.ascontiguousarray(np.resize(room_image, (2160, 3840, 3)))  # at max_image_pixels

    def burst():  # one session: each new image replaces the last, so it holds one frame at a time
        for _ in range(4):
            assert client.converse(QUESTION, session_id=session, image=huge, timeout=120).error == ""
        client.converse(QUESTION, session_id=session, image=room_image, timeout=60)

    # The first large goals grow DDS's receive buffers to their size once (~130 MB here, measured: the level after
    # the second and third bursts is the same as after the first); what must not stay is the frames themselves.
    burst()
    time.sleep(8)  # finished goals' results expire (5 s)
    before = rss_mb(process.pid)
    burst()
    peak = rss_mb(process.pid)
    deadline = time.monotonic() + 10
    while rss_mb(process.pid) > 1.1 * before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rss_mb(process.pid) <= 1.1 * before, (before, peak, rss_mb(process.pid))
    assert peak > before + 50  # the burst did hold its frames while it ran (the test measures something)


def test_topic_bad_queries(client):
    assert "query is empty" in ask(client, "  ").error
    assert "max_query_chars" in ask(client, "x" * 10_000).error


def test_node_survives_and_reports(client, node, room_image):
    process, log = node
    assert process.poll() is None, log.read_text()[-2000:]
    assert client.converse(QUESTION, image=room_image, timeout=30).error == ""
    client.diagnostics.clear()
    client.spin_until(lambda: client.diagnostics, 5, "diagnostics")
    values = {kv.key: kv.value for kv in client.diagnostics[-1].status[0].values}
    assert values["loaded"] == "True" and values["device"] == "cpu" and values["queue_depth"] == "0"
    assert int(values["served"]) >= 5 and int(values["sessions"]) <= 3  # max_sessions bounds memory


def test_model_that_failed_to_load(tmp_path, ros, room_image):
    process = start_node(tmp_path / "broken.log", namespace="/broken", model=str(tmp_path / "missing"),
                         device="cpu")
    try:
        client = LisaClient(context=ros, namespace="broken")
        try:
            client.wait_for_node(30)
            result = client.converse(QUESTION, image=room_image, timeout=20)
            assert "model failed to load" in result.error and str(tmp_path / "missing") in result.error
            assert process.poll() is None
        finally:
            client.close()
    finally:
        stop_node(process)


@pytest.mark.parametrize("then", ["dies", "restarts"])
def test_a_client_mid_turn_when_the_node_is_killed_gets_session_closed_not_a_hang(tiny_ckpt, tmp_path, ros,
                                                                                   room_image, then):
    """Found by bench_robustness: a turn whose node was killed waited for its result until the client's timeout
    (300 s by default), and with a node restarted at once it would never come. Now ``SessionClosed``, within the DDS
    lease (10 s in lisa_ros/fastdds_local.xml) and the re-ask period."""
    import signal

    from lisa_ros.client import SessionClosed

    params = dict(namespace="/killed", model=str(tiny_ckpt), dtype="float32", device="cpu", max_new_tokens=1500)
    processes = [start_node(tmp_path / "first.log", **params)]
    client = LisaClient(context=ros, namespace="killed")
    killed = []

    def kill(feedback):
        if not killed and feedback.stage != "queued":
            killed.append(time.monotonic())
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait()
            if then == "restarts":
                processes.append(start_node(tmp_path / "second.log", **params))

    try:
        client.wait_for_node(60)
        session = client.converse(QUESTION, image=room_image, max_new_tokens=4, timeout=60).session_id
        with pytest.raises(SessionClosed):
            client.converse("And where can I sit?", session_id=session, timeout=120, on_feedback=kill)
        assert killed and time.monotonic() - killed[0] < 30
        if then == "restarts":  # the new node serves; the old session is gone, and says so
            client.wait_for_node(60)
            answer = client.converse("And now?", session_id=session, max_new_tokens=4, timeout=60)
            assert f"unknown session id '{session}'" in answer.error and "restarted" in answer.error
    finally:
        client.close()
        for process in processes:
            stop_node(process)


def test_lifecycle_deactivate_frees_and_activate_reloads(client, room_image):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    def change(transition_id):
        answer = call(client, ChangeState, "/lisa/change_state",
                      ChangeState.Request(transition=Transition(id=transition_id)), timeout=60)
        assert answer.success

    assert call(client, GetState, "/lisa/get_state", GetState.Request()).current_state.label == "active"
    change(Transition.TRANSITION_DEACTIVATE)
    assert call(client, GetState, "/lisa/get_state", GetState.Request()).current_state.label == "inactive"
    result = client.converse(QUESTION, image=room_image, timeout=30)
    assert "model unloaded" in result.error
    client.diagnostics.clear()
    client.spin_until(lambda: client.diagnostics, 5, "diagnostics")
    assert {kv.key: kv.value for kv in client.diagnostics[-1].status[0].values}["loaded"] == "False"
    change(Transition.TRANSITION_ACTIVATE)
    assert client.converse(QUESTION, image=room_image, timeout=30).error == ""


def test_requests_queued_when_the_node_deactivates_get_its_reason(client, room_image):
    """Found by bench_robustness: topic queries waiting behind a running turn when the node deactivated failed with
    "internal error: 'NoneType' object has no attribute …"; they must get the reason, and the running turn finishes."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    def change(transition_id):
        request = ChangeState.Request(transition=Transition(id=transition_id))
        assert call(client, ChangeState, "/lisa/change_state", request, timeout=60).success

    client.camera.publish(image_msg(client, room_image, 1300))
    long_turn = client.action.send_goal_async(Converse.Goal(text=QUESTION, image=client.image_msg(room_image),
                                                            max_new_tokens=1500))
    client.spin_until(long_turn.done, 20, "the long turn's acceptance")
    texts = [f"queued {i}: {QUESTION}" for i in range(3)]
    for text in texts:
        client.query.publish(String(data=text))
    change(Transition.TRANSITION_DEACTIVATE)
    try:
        client.spin_until(lambda: {r.query for r in client.results} >= set(texts), 30, "the queued queries' answers")
        errors = [r.error for r in client.results if r.query in texts]
        assert all(e == "" or "model unloaded" in e for e in errors), errors
        result = long_turn.result().get_result_async()
        client.spin_until(result.done, 60, "the long turn's result")
        turn = result.result().result.result
        assert turn.error == "" or "model unloaded" in turn.error, turn.error
    finally:
        change(Transition.TRANSITION_ACTIVATE)
    assert client.converse(QUESTION, image=room_image, timeout=30).error == ""


def set_parameter(client, name, value: str, node_name="/lisa"):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(name, Parameter.Type.STRING, value).to_parameter_msg()])
    return call(client, SetParameters, f"{node_name}/set_parameters", request).results[0]


def get_parameter(client, name, node_name="/lisa") -> str:
    from rcl_interfaces.srv import GetParameters

    request = GetParameters.Request(names=[name])
    return call(client, GetParameters, f"{node_name}/get_parameters", request).values[0].string_value


def wait_for_diagnostics(client, check, timeout=30.0, node_name=None) -> dict:
    """The newest /diagnostics values (of ``node_name`` only, when given) once ``check(values)`` holds."""
    deadline = time.monotonic() + timeout

    def received():
        return [m for m in client.diagnostics if node_name is None or m.status[0].name.startswith(f"{node_name}:")]

    while True:
        client.diagnostics.clear()
        client.spin_until(received, 5, "diagnostics")
        values = {kv.key: kv.value for kv in received()[-1].status[0].values}
        if check(values) or time.monotonic() > deadline:
            return values


def test_adapter_switched_at_run_time(client, node, make_adapter, room_image, tmp_path):
    adapter, _ = make_adapter(1)
    goal = Converse.Goal(text=QUESTION, image=client.image_msg(room_image), max_new_tokens=8)

    def answer(expected_adapter=""):  # greedy on the same image: the same answer on the same weights
        result = send(client, goal)
        assert result.error == "", result.error
        assert result.adapter == expected_adapter  # every answer names the weights that computed it
        return result.reply, list(result.scores), list(result.mask_areas)

    base = answer()
    opened = client.converse(QUESTION, image=room_image, timeout=30)
    try:
        assert set_parameter(client, "adapter", str(adapter)).successful
        values = wait_for_diagnostics(client, lambda v: v["adapter"] == str(adapter))
        assert values["adapter"] == str(adapter) and values["adapter_error"] == ""
        tuned = answer(str(adapter))
        assert tuned != base
        stale = client.converse("And where can I sit?", session_id=opened.session_id, timeout=30)
        assert f"was closed: the model switched to adapter '{adapter}'" in stale.error

        refused = set_parameter(client, "adapter", str(tmp_path / "missing"))
        assert not refused.successful and "is not a directory" in refused.reason
        assert get_parameter(client, "adapter") == str(adapter)
        assert wait_for_diagnostics(client, lambda v: True)["adapter"] == str(adapter)
        assert answer(str(adapter)) == tuned  # still serving the adapter
        assert node[0].poll() is None
    finally:
        assert set_parameter(client, "adapter", "").successful
        assert wait_for_diagnostics(client, lambda v: v["adapter"] == "")["adapter"] == ""
    assert answer() == base



def test_bad_adapter_at_start_serves_the_base_model(tiny_ckpt, tmp_path, ros, room_image):
    missing = str(tmp_path / "no-adapter")
    process = start_node(tmp_path / "adapter.log", namespace="/adapted", model=str(tiny_ckpt), device="cpu",
                         dtype="float32", max_new_tokens=4, adapter=missing)
    try:
        client = LisaClient(context=ros, namespace="adapted")
        errors = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: errors.extend(
            kv.value for kv in m.status[0].values if kv.key == "adapter_error" and missing in kv.value), 10)
        try:
            client.wait_for_node(30)
            assert client.converse(QUESTION, image=room_image, timeout=20).error == ""
            assert get_parameter(client, "adapter", "/adapted/lisa") == ""  # what runs: the base model
            client.spin_until(lambda: errors, 10, "the adapter error in diagnostics")
            assert "failed to load" in errors[-1] and "serving the base model" in errors[-1]
            assert process.poll() is None
        finally:
            client.close()
    finally:
        stop_node(process)


# --- the embedded trained model over DDS: right answers, not just well-formed ones --------------------------------

HELD_OUT = 13  # a room split no training run uses
PLANT_STEPS = 300  # lisa-train steps that teach the embedded model "plant" (micro-batch 8, ~2.5 min here)


def held_out_rooms(*names, count=1):
    """The first ``count`` held-out rooms holding every one of ``names`` (as visible targets or distractors)."""
    from training.data.rooms import LABELS, draw_room
    from training.data.synthetic import room_seed

    rooms = [room for room in (draw_room(room_seed(HELD_OUT, i)) for i in range(500))
             if all((room.labels == LABELS.index(n)).sum() >= 150 for n in names)]
    assert len(rooms) >= count, f"too few held-out rooms with {names}"
    return rooms[:count]


def class_mask(room, name):
    from training.data.rooms import LABELS

    return room.labels == LABELS.index(name)


def answer_check(result, room, name) -> tuple[list, float]:
    """(the objects the reply names, the IoU of its first mask with ``name``'s ground truth)."""
    from lisa_core.metrics import first_mask_iou, named_in
    from lisa_ros.client import mask_arrays
    from training.data.rooms import LABELS

    masks = mask_arrays(result)
    return named_in(result.reply, LABELS[3:]), first_mask_iou(masks, class_mask(room, name))


@pytest.fixture(scope="module")
def embedded(ros, tmp_path_factory):
    """lisa-node with no model given: the embedded lisa-tiny-rooms, in namespace /embedded."""
    log = tmp_path_factory.mktemp("embedded") / "node.log"
    process = start_node(log, namespace="/embedded", device="cpu", max_new_tokens=24, depth_topic="depth/image",
                         camera_info_topic="camera/camera_info")
    client = LisaClient(context=ros, namespace="embedded")
    client.diagnostics = []
    client.node.create_subscription(DiagnosticArray, "/diagnostics", client.diagnostics.append, 10)
    client.wait_for_node(60)
    yield client, process
    client.close()
    stop_node(process)


def test_embedded_model_answers_right_over_dds(embedded):
    client, _ = embedded
    room, = held_out_rooms("sink", "window")
    first = client.converse("Where can I wash my hands?", image=room.image, timeout=60)
    assert first.error == "" and answer_check(first, room, "sink")[0][:1] == ["sink"]
    assert answer_check(first, room, "sink")[1] >= 0.7  # now 0.91 (the window 0.88)
    follow = client.converse("And where can I look outside?", session_id=first.session_id, timeout=60)
    names, iou = answer_check(follow, room, "window")
    assert follow.turn == 2 and names[:1] == ["window"] and iou >= 0.7, (follow.reply, iou)


@pytest.fixture(scope="module")
def plant_adapter(tmp_path_factory):
    """A LoRA adapter taught a new class ("plant": a distractor the embedded model was never asked about) by a short
    lisa-train run from lisa-tiny-rooms, exported as ``lisa-export --adapter-only`` writes it."""
    from training.data.synthetic import write_scannet_scenes
    from training.export import export_adapter
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("plant")
    write_scannet_scenes(root / "data" / "scannet", scenes=4, frames=40, seed=3)
    config = TrainConfig.load(str(ROOT / "training" / "configs" / "lisa_tiny_rooms_plant.yaml"), [
        f"dataset_dir={root / 'data'}", f"output_dir={root / 'run'}", f"steps_per_epoch={PLANT_STEPS}", "eval={}"])
    train(config)
    return export_adapter(root / "run", root / "adapter")


def test_adapter_trained_on_a_new_class_switched_in_at_run_time(embedded, plant_adapter):
    client, process = embedded
    rooms = held_out_rooms("plant", count=3)

    def ask_for_plants():
        results = [client.converse("Where is the plant?", image=room.image, timeout=60) for room in rooms]
        assert all(r.error == "" for r in results)
        checks = [answer_check(r, room, "plant") for r, room in zip(results, rooms)]
        return results, sum(names[:1] == ["plant"] for names, _ in checks), np.mean([iou for _, iou in checks])

    _, base_named, base_iou = ask_for_plants()
    assert base_named == 0  # the base model was never taught plants
    try:
        assert set_parameter(client, "adapter", str(plant_adapter), "/embedded/lisa").successful
        wait_for_diagnostics(client, lambda v: v["adapter"] == str(plant_adapter))
        results, named, mean_iou = ask_for_plants()
        assert all(r.adapter == str(plant_adapter) for r in results)
        # named every time; masks partly there (mean IoU ≈ 0.16 against ≈ 0.02 before with the model shipped before
        # 2026-12-07: SAM's encoder is frozen under the paper's LoRA set; the base now names other things, IoU ≈ 0.05)
        assert named == 3 and mean_iou >= base_iou + 0.05, ([r.reply for r in results], mean_iou, base_iou)
    finally:
        assert set_parameter(client, "adapter", "", "/embedded/lisa").successful
    assert process.poll() is None


# --- 3-D targets from depth (the embedded node, depth on /embedded/depth/image) ----------------------------------
FOCAL = 300.0  # px, the synthetic camera of the 256×192 rooms


def camera_info(width=256, height=192):
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=width, height=height,
                      k=[FOCAL, 0.0, (width - 1) / 2, 0.0, FOCAL, (height - 1) / 2, 0.0, 0.0, 1.0])
    info.header.frame_id = "camera_color_optical_frame"
    return info


def box_depth(room, name, box_m=1.2, wall_m=3.0):
    """Metres: the object ``name`` (its mask, grown by 3 px) a flat face at ``box_m``, everything else ``wall_m``."""
    import cv2

    grown = cv2.dilate(class_mask(room, name).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return np.where(grown, box_m, wall_m).astype(np.float32)


def depth_msg(metres, encoding, stamp_sec):
    data = (np.nan_to_num(metres * 1000, nan=0.0).round().astype(np.uint16) if encoding == "16UC1"
            else metres.astype(np.float32))
    msg = Image(height=metres.shape[0], width=metres.shape[1], encoding=encoding, is_bigendian=0,
                step=metres.shape[1] * data.itemsize, data=data.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = stamp_sec, "camera_depth_optical_frame"
    return msg


@pytest.fixture(scope="module")
def depth_io(embedded):
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo
    from visualization_msgs.msg import MarkerArray

    client, _ = embedded
    io = {"depth": client.node.create_publisher(Image, "depth/image", qos_profile_sensor_data),
          "info": client.node.create_publisher(CameraInfo, "camera/camera_info", qos_profile_sensor_data),
          "targets": [], "markers": []}
    client.node.create_subscription(PointStamped, "lisa/target", io["targets"].append, 10)
    client.node.create_subscription(MarkerArray, "lisa/markers", io["markers"].append, 10)
    return io


def send_depth(client, io, msg):
    """Publish depth + camera info (best effort) until the node's diagnostics count one more depth frame."""
    seen = int(wait_for_diagnostics(client, lambda v: True, node_name="/embedded/lisa")["depth_frames_received"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        io["info"].publish(camera_info())
        io["depth"].publish(msg)
        values = wait_for_diagnostics(client, lambda v: True, node_name="/embedded/lisa")
        if int(values["depth_frames_received"]) > seen and values["camera_info"] == "received":
            return
    raise TimeoutError("the node never counted the depth frame")


def stamped_image(client, room, stamp_sec):
    return image_msg(client, room.image, stamp_sec)


def test_answer_without_depth_says_why_and_publishes_no_point(embedded, depth_io):
    client, _ = embedded
    room, = held_out_rooms("sink", "window")
    result = client.converse("Where can I wash my hands?", image=stamped_image(client, room, 3000), timeout=60)
    assert result.error == "" and result.masks and len(result.targets) == len(result.masks)
    assert not result.targets[0].valid and result.targets[0].reason  # no camera info / depth received yet
    assert np.isnan(result.targets[0].point.z) and not depth_io["targets"]


def test_three_d_target_of_a_box_at_a_known_distance(embedded, depth_io):
    from lisa_core.geometry import Pinhole, mask_target
    from lisa_ros.client import mask_arrays

    client, process = embedded
    room, = held_out_rooms("sink", "window")  # the room whose sink mask the DDS test proves (IoU ≥ 0.7)
    clean = box_depth(room, "sink")
    camera = Pinhole.from_k(camera_info().k, 256, 192)
    send_depth(client, depth_io, depth_msg(clean, "16UC1", 3001))
    result = client.converse("Where can I wash my hands?", image=stamped_image(client, room, 3001), timeout=60)
    target = result.targets[0]
    assert target.valid, target.reason
    assert abs(target.point.z - 1.2) < 0.01  # the mask (IoU ≥ 0.7 with the sink) sits on the box's face
    truth = mask_target(mask_arrays(result)[0], clean, camera)
    point = np.array([target.point.x, target.point.y, target.point.z])
    assert np.linalg.norm(point - truth.point) < 0.01 and target.valid_depth_share == pytest.approx(1.0)
    assert (target.header.frame_id, target.header.stamp.sec) == ("camera_depth_optical_frame", 3001)
    client.spin_until(lambda: depth_io["targets"] and depth_io["markers"], 10, "lisa/target and lisa/markers")
    published = depth_io["targets"][-1]
    assert published.header.stamp.sec == 3001 and published.point.z == pytest.approx(target.point.z)
    kinds = [m.type for m in depth_io["markers"][-1].markers]
    from visualization_msgs.msg import Marker
    assert depth_io["markers"][-1].markers[0].action == Marker.DELETEALL and Marker.CUBE in kinds

    # the same box in 32FC1 at half the size, with noise and 30 % of the pixels without depth
    rng = np.random.default_rng(0)
    small = clean[::2, ::2] + rng.normal(0, 0.01, (96, 128)).astype(np.float32)
    small[rng.random((96, 128)) < 0.3] = np.nan
    send_depth(client, depth_io, depth_msg(small, "32FC1", 3002))
    noisy = client.converse("Where can I wash my hands?", image=stamped_image(client, room, 3002), timeout=60)
    target = noisy.targets[0]
    assert target.valid and 0.6 < target.valid_depth_share < 0.8
    assert np.linalg.norm(np.array([target.point.x, target.point.y, target.point.z]) - truth.point) < 0.02

    # bad depth (an unknown encoding) spoils only the 3-D part: the answer is given, the node keeps serving
    bad = depth_msg(clean, "16UC1", 3003)
    bad.encoding = "rgb8"
    send_depth(client, depth_io, bad)
    spoiled = client.converse("Where can I wash my hands?", image=stamped_image(client, room, 3003), timeout=60)
    assert spoiled.error == "" and spoiled.masks and not spoiled.targets[0].valid
    assert "depth encoding 'rgb8'" in spoiled.targets[0].reason
    late = client.converse("Where can I wash my hands?", image=stamped_image(client, room, 3010), timeout=60)
    assert "close enough in time" in late.targets[0].reason and process.poll() is None


# --- follow mode (lisa/follow) on held-out moving-camera sequences, the embedded node ----------------------------
FOLLOWED = ("bookshelf", 1001)  # the held-out sequence followed (bench_follow's second: tiered mean IoU 0.68)
CAMERA_HZ = 10.0


@pytest.fixture(scope="module")
def follow_io(embedded):
    client, _ = embedded
    io = {"masks": {}}
    client.node.create_subscription(Image, "lisa/mask", lambda m: io["masks"].__setitem__(m.header.stamp.sec, m), 50)
    return io


def sequence(target, index, frames=80):
    from training.data.sequences import make_sequence
    from training.data.synthetic import room_seed

    return make_sequence(room_seed(HELD_OUT, index), target, frames=frames)


def show_first_frame(client, seq, stamp_sec):
    """Publish frame 0 until the node counts it (best-effort camera QoS), so that a question is asked on it."""
    msg = image_msg(client, seq.frames[0], stamp_sec)
    seen = int(wait_for_diagnostics(client, lambda v: True, node_name="/embedded/lisa")["frames_received"])
    deadline = time.monotonic() + 20
    while int(wait_for_diagnostics(client, lambda v: True, node_name="/embedded/lisa")["frames_received"]) == seen:
        assert time.monotonic() < deadline, "the node never received the first frame"
        client.camera.publish(msg)


def play(client, seq, base, frames, hz=CAMERA_HZ):
    """Publish ``frames`` (indices into the sequence) as a camera at ``hz``, stamped ``base + index``."""
    for k in frames:
        client.camera.publish(image_msg(client, seq.frames[k % len(seq.frames)], base + k))
        until = time.monotonic() + 1 / hz
        while time.monotonic() < until:
            client.executor.spin_once(timeout_sec=max(0.0, until - time.monotonic()))


def feedback_iou(io, seq, base, f) -> float:
    """IoU of the update's lisa/mask with the target: its visible part, or (while someone walks past it) the whole
    of it behind them — the flow carries the whole object, which is what a robot reaching for it wants."""
    from lisa_core.follow import overlap
    from lisa_ros.images import raw_image_to_rgb

    k = f.header.stamp.sec - base
    mask = raw_image_to_rgb(io["masks"][f.header.stamp.sec])[..., 0] > 0
    return max(overlap(mask, seq.truth[k]), overlap(mask, seq.whole[k]))


def test_follow_keeps_the_target_says_lost_when_it_leaves_and_stops_on_cancel(embedded, follow_io):
    client, process = embedded
    target, index = FOLLOWED
    seq, base = sequence(target, index), 5000
    from training.data.rooms import TARGETS

    show_first_frame(client, seq, base)
    updates = []
    handle = client.start_follow(TARGETS[target][1][0], on_feedback=updates.append)
    client.spin_until(lambda: updates, 60, "the answer (the follow's first update)")
    assert updates[0].tier == "answer" and updates[0].header.stamp.sec == base and updates[0].session_id
    play(client, seq, base, range(1, len(seq.frames)))
    client.spin_until(lambda: updates[-1].header.stamp.sec == base + len(seq.frames) - 1, 5, "the last update")
    cancelled = handle.cancel_goal_async()
    client.spin_until(cancelled.done, 10, "the cancel")
    result = handle.get_result_async()
    client.spin_until(result.done, 10, "the result")
    assert result.result().status == GoalStatus.STATUS_CANCELED and result.result().result.reason == "cancelled"
    count = len(updates)
    play(client, seq, base + 1000, range(5))
    assert len(updates) == count, "updates after the cancel"

    client.spin_until(lambda: all(f.header.stamp.sec in follow_io["masks"] for f in updates), 5, "every mask")
    frames = [f.header.stamp.sec - base for f in updates]
    assert frames == sorted(set(frames)), "each frame at most once, in order"
    full = max(seq.truth[k].sum() for k in range(len(seq.frames)) if seq.phases[k] == "on")
    ious = {f.header.stamp.sec - base: feedback_iou(follow_io, seq, base, f) for f in updates}
    tiers = {f.header.stamp.sec - base: f.tier for f in updates}
    in_view = [k for k in ious if seq.truth[k].sum() >= full / 2]
    assert len(in_view) >= 30 and min(ious[k] for k in in_view) >= 0.5, {k: (tiers[k], round(ious[k], 2)) for k in in_view if ious[k] < 0.6}
    gone = seq.visible.index(False)
    back = gone + seq.visible[gone:].index(True)
    lost_at = next(k for k in sorted(tiers) if k >= gone and tiers[k] == "lost")
    assert lost_at - gone <= CAMERA_HZ / 2, (f"lost reported {lost_at - gone} frames after the target left",
                                            {k: tiers.get(k) for k in range(gone - 3, lost_at + 1)})
    assert all(tiers[k] == "lost" for k in tiers if gone + 5 <= k < back)
    assert any(tiers[k] != "lost" for k in tiers if k >= back), "not re-acquired after it came back"
    assert process.poll() is None


def test_follows_are_bounded_a_query_meanwhile_is_answered_and_each_ends_with_its_reason(embedded, follow_io,
                                                                                         plant_adapter):
    client, process = embedded
    seq, base = sequence("sink", 1005), 7000  # bench_follow's sink: followed cleanly through the whole sequence
    question = "Where can I wash my hands?"
    show_first_frame(client, seq, base)
    first = client.converse(question, image=image_msg(client, seq.frames[0], base), timeout=60)
    assert first.error == "" and first.masks, first.reply
    by_session, timed = [], []
    follow = client.start_follow(session_id=first.session_id, on_feedback=by_session.append)
    brief = client.start_follow(question, duration_s=2.0, on_feedback=timed.append)
    ended = brief.get_result_async()  # asked for now: the node keeps a finished goal's result only 5 s
    client.spin_until(lambda: by_session and timed, 60, "both follows' first updates")
    assert by_session[0].tier == "answer" and by_session[0].session_id == first.session_id
    refused = client.start_follow(session_id=first.session_id).get_result_async()
    client.spin_until(refused.done, 10, "the third follow's refusal")
    assert refused.result().status == GoalStatus.STATUS_ABORTED
    assert refused.result().result.reason.startswith("busy: 2 follows") and "max_follows 2" in refused.result().result.reason
    assert wait_for_diagnostics(client, lambda v: v["follows"].startswith("2 "), node_name="/embedded/lisa")

    frames = iter(range(1, 10_000))

    def next_frame():  # the camera at 10 Hz from the client's executor, also while a query waits for its answer
        k = next(frames)
        client.camera.publish(image_msg(client, seq.frames[k % len(seq.frames)], base + k))

    camera = client.node.create_timer(1 / CAMERA_HZ, next_frame)
    try:
        client.spin_until(lambda: len(by_session) >= 5, 20, "follow updates")
        room, = held_out_rooms("sink", "window")
        during = client.converse(question, image=room.image, timeout=60)  # while both follow, at camera rate
        names, iou = answer_check(during, room, "sink")
        assert during.error == "" and names[:1] == ["sink"] and iou >= 0.5, (during.reply, iou)
        count = len(by_session)
        client.spin_until(lambda: len(by_session) >= count + 3, 20, "follow updates after the query")

        client.spin_until(ended.done, 20, "the timed follow's end")
        assert ended.result().status == GoalStatus.STATUS_SUCCEEDED
        assert ended.result().result.reason == "duration reached"
        client.spin_until(lambda: len(timed) == ended.result().result.updates, 5, "every update of the timed follow")

        switched = follow.get_result_async()
        try:
            assert set_parameter(client, "adapter", str(plant_adapter), "/embedded/lisa").successful
            client.spin_until(switched.done, 30, "the follow's end after the adapter switch")
        finally:
            assert set_parameter(client, "adapter", "", "/embedded/lisa").successful
        assert switched.result().status == GoalStatus.STATUS_ABORTED
        assert "adapter changed" in switched.result().result.reason, switched.result().result.reason
    finally:
        client.node.destroy_timer(camera)
    wait_for_diagnostics(client, lambda v: v["adapter"] == "" and v["follows"].startswith("0 "),
                         node_name="/embedded/lisa")
    assert process.poll() is None
