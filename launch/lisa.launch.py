"""Launch the LISA node: ``ros2 launch lisa_ros lisa.launch.py [model:=…] [quantization:=4bit] [image_topic:=…]
[adapter:=DIR] [depth_topic:=…] [camera_info_topic:=…] [namespace:=…] [params_file:=…] [enclave:=/lisa]``. Arguments given
here override the parameters file; ``enclave`` runs the node under SROS2 with that enclave (see the README's Security)."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

ARGUMENTS = {
    "model": ("lisa-tiny-rooms", "LISA checkpoint: embedded model name, hub id (xinlai/LISA-7B-v1) or local directory"),
    "quantization": ("none", "none | 4bit | 8bit"),
    "adapter": ("", "LoRA adapter directory (lisa-export --adapter-only); empty: the base model"),
    "image_topic": ("/camera/image_raw", "camera topic"),
    "depth_topic": ("", "depth registered to the camera (16UC1 mm / 32FC1 m); empty: no 3-D targets"),
    "camera_info_topic": ("/camera/camera_info", "CameraInfo of the colour camera (with depth_topic)"),
    "dtype": ("auto", "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16"),
    "device": ("", "torch device; empty: cuda if available"),
}


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("lisa_ros"), "config", "lisa.yaml")
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in ARGUMENTS.items()]
    declared += [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameters YAML"),
        DeclareLaunchArgument("enclave", default_value="",
                              description="SROS2 enclave of the node (with ROS_SECURITY_KEYSTORE set); empty: none"),
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=lisa_node)])


def lisa_node(context):
    enclave = LaunchConfiguration("enclave").perform(context)
    return [LifecycleNode(
        package="lisa_ros", executable="lisa_node", name="lisa", namespace=LaunchConfiguration("namespace"),
        output="screen", ros_arguments=["--enclave", enclave] if enclave else [],
        parameters=[LaunchConfiguration("params_file"),
                    {name: LaunchConfiguration(name) for name in ARGUMENTS}],
    )]
