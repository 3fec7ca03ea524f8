"""lisa_ros: reasoning segmentation (LISA) for robots. An ament_python-style package, also pip-installable."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lisa_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="LISA reasoning segmentation: inference engine, ROS 2 node and LoRA fine-tuning",
    license="Apache-2.0",
    packages=find_packages(include=["lisa_core", "lisa_core.*", "lisa_ros", "lisa_ros.*", "training",
                                    "training.*"]),
    package_data={"lisa_core": ["data/*.png", "data/*.json", "models/*/*", "models/*/*/*"], "lisa_ros": ["*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "lisa-chat = lisa_core.cli:main",
            "lisa-make-tiny = lisa_core.tiny:main",
            "lisa-node = lisa_ros.node:main",
            "lisa-query = lisa_ros.client:main",
            "lisa-demo = lisa_ros.demo:main",
            "lisa-train = training.train:main",
            "lisa-export = training.export:main",
            "lisa-eval = training.evaluate:main",
            "lisa-make-rooms = training.data.synthetic:main",
            # the ROS names (ros2 run lisa_ros lisa_node, the launch file); the same programs as above
            "lisa_node = lisa_ros.node:main",
            "lisa_query = lisa_ros.client:main",
            "lisa_demo = lisa_ros.demo:main",
        ],
    },
)
