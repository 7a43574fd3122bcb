DROP TABLE sync_epoch;
