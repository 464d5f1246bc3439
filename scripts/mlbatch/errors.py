"""Every custom error name the state machines raise, with its meaning and recovery.

The test suite checks that every ``Fail.Error`` and ``ErrorEquals`` in the
rendered ASL is either a ``States.*`` name or listed here.
"""
from __future__ import annotations

__all__ = ["ERRORS", "SERVICE_ERRORS"]

#: name -> (meaning, what the operator does)
ERRORS: dict[str, tuple[str, str]] = {
    "Intake.InvalidInput": (
        "The event is none of the accepted shapes (normalized, SQS record, SNS envelope, "
        "one-record Pipes batch), a field has the wrong type, or a body/Message is not a JSON object.",
        "Fix the producer; replay the corrected event (normalized shape) from the console.",
    ),
    "Intake.InvalidS3Key": (
        "The S3 path is not org1/org2/project/YYYY/MM/dd/mini_batch_id/file "
        "(8 non-empty segments, a real date, years 1900-2399).",
        "Fix the key in the event; replay it. Nothing was locked or started.",
    ),
    "Intake.InvalidTimestamp": (
        "The timestamp is not YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00|nothing), uses another "
        "offset, or names an instant that does not exist.",
        "Send the batch timestamp in UTC; replay. Nothing was locked or started.",
    ),
    "Config.ProjectNotFound": (
        "No item for the project in the project-defaults table.",
        "Add the project's defaults item, then replay the event (same input).",
    ),
    "Config.DefaultsUnavailable": (
        "Reading the project-defaults table failed after retries (throttling, permissions, a missing "
        "table). Nothing was locked or started.",
        "Fix the cause named in the error (table name, IAM, capacity), then replay the event (same input).",
    ),
    "Config.InvalidProjectDefaults": (
        "The project's defaults item lacks feature_spec_version or a complete "
        "traffic_input.field_mapping (all five canonical fields, as strings), or the version holds '#'.",
        "Correct the item, then replay the event (same input).",
    ),
    "Intake.WindowCollision": (
        "Another mini-batch of the same project already holds the lock for this exact window key "
        "(same timestamp to the second). Suppressing it would lose data.",
        "Inspect both batches (the cause names them); re-emit this batch with its own timestamp, "
        "or merge it upstream. The existing lock is untouched.",
    ),
    "Intake.LockWriteFailed": (
        "Writing or reading the batch's binding or its window lock failed for another reason than the lock being held: "
        "throttling past the retries, permissions, or an existing lock item whose attributes have other "
        "types than mlbatch writes (e.g. attempts stored as a string). Nothing was started.",
        "Read the cause; check the item it names (`mlbatch locks show KEY`: a window lock, or the binding "
        "`batch#<feature_spec_version>#<folder>/`) and the table, fix, then `mlbatch replay INTAKE_ARN`.",
    ),
    "Intake.PipelineStartFailed": (
        "The lock was taken but starting the pipeline failed; the lock was released "
        "(deleted if new, set FAILED if re-acquired, its attempt taken back: no run was counted). If that "
        "release failed too, the cause says the lock is still IN_PROGRESS (the audit heals it).",
        "Check the cause (quota, permissions, missing pipeline); replay the event.",
    ),
    "Pipeline.InvalidInput": (
        "The pipeline was started with an input lacking a required field (it is meant to be "
        "started by the intake or the backfill). Its lock, if any, is released by lock_release.",
        "Replay the intake event (or backfill unit) instead of starting the pipeline by hand.",
    ),
    "Pipeline.BuildFailed": (
        "A builder job failed, or a call around it did (the cause carries the job's error and "
        "FailureReason). The lock is FAILED with that error and cause.",
        "Fix the builder or its input; redeliver or replay the intake event: the FAILED window "
        "is re-acquired and runs again.",
    ),
    "Pipeline.LockLost": (
        "The window lock does not belong to this execution: at the start (a console replay of a pipeline "
        "execution, or a pipeline started by hand: no builder ran), or at the end (reset, or re-acquired "
        "after lock_release: the outputs were written but not recorded).",
        "Read the lock ledger: if the window's current run succeeded, nothing to do; otherwise replay.",
    ),
    "Pipeline.LockUpdateFailed": (
        "The pipeline's final lock write (SUCCEEDED or FAILED) failed after its retries (throttling, "
        "permissions): the lock is still IN_PROGRESS. The cause names the build's outcome and the write's error.",
        "Fix the cause; lock_release (this execution's status-change event) marks the lock FAILED within "
        "a minute (`mlbatch locks show LOCK_KEY`; if it stays IN_PROGRESS, `mlbatch audit --manifest` releases it "
        "after --stuck-after). Then replay the intake execution `mlbatch replay PIPELINE_ARN --dry-run` names.",
    ),
    "Backfill.InvalidInput": (
        "The backfill input is none of {from, to[, prefix][, projects]}, {manifest: {bucket, key}} "
        "or a non-empty {units: [...]}. Nothing was started.",
        "Start it again with one of the documented inputs (examples in tests/events/).",
    ),
    "Backfill.ExtractFailed": (
        "The extractor's SageMaker Processing job failed; its FailureReason is in the cause. "
        "Nothing was started.",
        "Read the job's log (/aws/sagemaker/ProcessingJobs), fix the cause, start the backfill again.",
    ),
    "Backfill.InvalidUnit": (
        "(per unit, counted as failed) A unit lacks a field of the execution-unit contract.",
        "Fix the manifest line and run the backfill again: done windows are suppressed.",
    ),
    "Backfill.PoisonedWindow": (
        "(per unit, counted as poisoned) The window's lock is FAILED and was already tried max_attempts "
        "times (the sweep's limit); the unit was skipped.",
        "Fix what makes it fail (the lock's error and cause say), then `mlbatch locks reset` it or run a "
        "backfill without max_attempts.",
    ),
    "Backfill.UnitUncounted": (
        "(per unit, counted as uncounted) The unit's outcome could not be written to the run record "
        "after retries; its child execution failed, the backfill went on.",
        "Run the backfill again: windows that ran are suppressed by their locks.",
    ),
    "Backfill.MapRunFailed": (
        "The Distributed Map could not run the units: the manifest could not be read (missing, not JSON "
        "Lines, outside the artifacts bucket's backfill/ prefix the backfill may read) or results could not "
        "be written. Units that ran are counted in the run record.",
        "Fix the manifest location or permissions; start the backfill again (done windows are suppressed).",
    ),
    "LockRelease.LockUpdateFailed": (
        "lock_release could not mark the ended pipeline's lock FAILED (its write failed after retries): "
        "the lock is still IN_PROGRESS. The cause names the write's error.",
        "Fix the cause, then `mlbatch replay LOCK_RELEASE_ARN` (the same status-change event again; on AWS "
        "`--redrive` also works); or `mlbatch audit --manifest` releases the lock after --stuck-after.",
    ),
    "LockRelease.InvalidEvent": (
        "lock_release was started with something other than a Step Functions Execution Status "
        "Change event (detail.executionArn, status and input).",
        "Start it only from the EventBridge rule, or replay a status-change event from the archive.",
    ),
}

#: Integration errors the ASL names in Retry/Catch or a mock throws, each with its evidence.
#: Rule: an optimized integration raises `<Service>.<Java SDK exception class>`; an error code without
#: a class of its own arrives as the service's base class (AWS docs: "Handling errors in Step Functions
#: service integrations"). "recorded" = seen on AWS in LocalStack's AWS-validated snapshot tests
#: (localstack/localstack, tests/aws/services/stepfunctions/v2/).
SERVICE_ERRORS: dict[str, str] = {
    "DynamoDB.ConditionalCheckFailedException":
        "AWS docs, DynamoDB integration examples (dynamo-iam / connect-ddb) catch this name for a false "
        "ConditionExpression; the SDK's ConditionalCheckFailedException class",
    "DynamoDB.ProvisionedThroughputExceededException":
        "the SDK class for throttled requests (AmazonDynamoDB error mapping); names follow "
        "<Service>.<SDK exception class> as recorded for DynamoDB.ResourceNotFoundException "
        "(error_handling/test_task_service_dynamodb)",
    "DynamoDB.RequestLimitExceededException":
        "the SDK class for account-level throughput limits (AmazonDynamoDB error mapping), as above",
    "DynamoDB.InternalServerErrorException":
        "the SDK class for DynamoDB 500s (AmazonDynamoDB error mapping), as above",
    "DynamoDB.AmazonDynamoDBException":
        "recorded: a ValidationException arrives under the base class (error_handling/"
        "test_task_service_dynamodb); throttling codes without a class of their own (ThrottlingException) "
        "arrive the same way, so it is retried with few attempts",
    "StepFunctions.ExecutionLimitExceededException":
        "the SDK class AWSStepFunctions raises when too many executions are open; recorded naming: "
        "StepFunctions.StateMachineDoesNotExistException (test_task_service_sfn)",
    "StepFunctions.AWSStepFunctionsException":
        "the SDK base class: throttled StartExecution calls (ThrottlingException has no class of its own) "
        "arrive under it, as recorded for DynamoDB's base class",
    "Sfn.ExecutionDoesNotExistException":
        "AWS docs, AWS SDK integrations (supported-services-awssdk): errors are <ServiceName>.<ErrorName> in "
        "PascalCase, always with the Exception suffix; DescribeExecution's ExecutionDoesNotExist (Step Functions "
        "API reference) under aws-sdk:sfn; the engine raises this name",
    "SageMaker.ResourceLimitExceededException":
        "AWS docs, SageMaker integration (connect-sagemaker): its Retry example names it",
    "SageMaker.AmazonSageMakerException":
        "AWS docs, SageMaker integration (connect-sagemaker): its Retry example names it; throttling "
        "(no class of its own) arrives under this base class",
}
