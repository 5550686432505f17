-- A commit is one statement of data-modifying CTEs; when one of its checks fails (the account's
-- version moved on, a row belongs to another account, a reset link was used) its final SELECT
-- calls this, and the error undoes the whole statement. The message names the refusal.
CREATE FUNCTION portal_refuse(reason text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'PT409', MESSAGE = reason;
END;
$$;
