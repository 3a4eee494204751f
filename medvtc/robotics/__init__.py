"""medvtc.robotics"""
