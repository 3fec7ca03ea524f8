"""package.xml declares what the installed code imports, by rosdep key, so that `rosdep install --from-paths src`
gives a robot every ROS and system dependency; what rosdep has no key for (the ML stack) is in requirements.txt,
the README's one pip step."""
import ast
import importlib.metadata
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_CODE = ["lisa_core", "lisa_ros", "training", "launch"]  # what setup.py installs (packages, launch files)
OWN = {"lisa_core", "lisa_ros", "training"}
SYSTEM_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "PIL": "python3-pil"}
ROS_PACKAGES_NOT_ON_PYPI = {"launch", "launch_ros", "cv_bridge"}  # a ROS install has them; this venv may not
USED_WITHOUT_IMPORT = {"action_msgs": "rclpy.action's goal status and cancel messages",
                       "lifecycle_msgs": "rclpy.lifecycle's states and transitions"}


def imported_modules() -> dict[str, str]:
    """Top-level third-party module → one file that imports it, over all installed code."""
    found = {}
    for folder in INSTALLED_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def declared_keys() -> set[str]:
    tree = ET.parse(ROOT / "package.xml")
    return {e.text.strip() for tag in ("depend", "exec_depend") for e in tree.getroot().iter(tag)}


def is_ros_package(module: str) -> bool:
    if module in ROS_PACKAGES_NOT_ON_PYPI or module == "lisa_interfaces":
        return True
    return any(d.startswith("ros-") for d in importlib.metadata.packages_distributions().get(module, []))


def rosdep_key(module: str) -> str | None:
    return module if is_ros_package(module) else SYSTEM_KEYS.get(module)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_covered() -> set[str]:
    """Distributions requirements.txt installs: those it lists and what they require in turn."""
    listed = {normalized(re.split(r"[<>=~;\[ ]", line.strip())[0])
              for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    covered = set(listed)
    for dist in listed:
        for requirement in importlib.metadata.requires(dist) or []:
            if "extra ==" not in requirement:
                covered.add(normalized(re.split(r"[<>=~;\[ (!]", requirement)[0]))
    return covered


def test_every_ros_and_system_import_is_a_declared_rosdep_key():
    declared = declared_keys()
    missing = {module: (rosdep_key(module), where) for module, where in imported_modules().items()
               if rosdep_key(module) and rosdep_key(module) not in declared}
    assert not missing, f"imported but not in package.xml (module: (rosdep key, imported in)): {missing}"


def test_every_declared_key_is_used():
    imported_keys = {rosdep_key(module) for module in imported_modules()}
    unused = declared_keys() - imported_keys - set(USED_WITHOUT_IMPORT) - {"python3-pytest"}
    assert not unused, f"package.xml declares keys nothing imports: {unused}"


def test_what_rosdep_lacks_is_in_the_pip_step():
    covered = pip_covered()
    distributions = importlib.metadata.packages_distributions()
    uncovered = {}
    for module, where in imported_modules().items():
        if rosdep_key(module):
            continue
        names = {normalized(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported in {where}) is not installed here"
        if not names & covered:
            uncovered[module] = where
    assert not uncovered, f"imported, with no rosdep key, and not installed by requirements.txt: {uncovered}"


def test_readme_robot_steps_install_both():
    text = (ROOT / "README.md").read_text()
    robot = re.search(r"## The ROS 2 node.*?```bash\n(.*?)```", text, re.S).group(1)
    assert "rosdep install --from-paths src" in robot and "pip install -r src/lisa_ros/requirements.txt" in robot
