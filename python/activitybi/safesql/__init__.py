"""SafeSQL: named, typed query templates; the only SQL a customer can cause to run."""
