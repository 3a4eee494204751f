"""medvtc.datasets"""
