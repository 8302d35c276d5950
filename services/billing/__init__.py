"""Billing: accounts, prices, holds, settlement and the double-entry ledger."""
