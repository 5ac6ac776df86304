//! Vendor trust chain: vendor keys, key certificates, proof of possession.
