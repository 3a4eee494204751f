"""medvtc.medical"""
