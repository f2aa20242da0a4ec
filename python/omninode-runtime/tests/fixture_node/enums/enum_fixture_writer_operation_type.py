"""Operations of the fixture node, one per handler in contract.yaml."""

from enum import StrEnum


class EnumFixtureWriterOperationType(StrEnum):
    """Operations the node accepts."""

    INSERT_RECORD = "insert_record"
    UPDATE_RECORD = "update_record"
    GET_RECORD = "get_record"
    DELETE_RECORD = "delete_record"
    SEND_NOTIFICATION = "send_notification"
    CALL_FLAKY_SERVICE = "call_flaky_service"
    CHARGE_CARD = "charge_card"
