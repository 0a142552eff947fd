"""The relay daemon (``distrib relay``): parties that cannot accept connections are spliced to
each other through it, by public key. The party side is ``distrib.wire._relayed``."""
