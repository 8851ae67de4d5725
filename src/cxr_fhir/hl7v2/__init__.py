"""Pure HL7 v2: the ORU^R01 for a report version, ACK parsing and MLLP framing. No sockets here."""
