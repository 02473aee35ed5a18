"""ament_python package definition for av_td3_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'av_td3_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml', 'README.md']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config',
         glob('config/*.yaml') + glob('config/*.json') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='av_td3_ros maintainers',
    maintainer_email='maintainers@av-td3-ros.dev',
    description='TD3 with end-to-end CNNs for camera-based driving, as ROS 2 nodes.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'sim_node = av_td3_ros.ros.sim_node:main',
            'policy_node = av_td3_ros.ros.policy_node:main',
            'trainer_node = av_td3_ros.ros.trainer_node:main',
            'bringup = av_td3_ros.ros.bringup:main',
            'baseline = av_td3_ros.apps.baseline:main',
            'checkpoint_tool = av_td3_ros.apps.checkpoint_tool:main',
            'bag_tool = av_td3_ros.apps.bag_tool:main',
            'carla_episode_node = av_td3_ros.ros.carla_episode_node:main',
        ],
    },
)
